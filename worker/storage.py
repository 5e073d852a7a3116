"""Results too large for RunPod's job-result upload go to S3-compatible storage instead.

RunPod fails to accept worker results much over ~19 MB ("Failed to return job results | 400") and
the client then sees COMPLETED with no output: a silent loss. In: the serialised result and the
job id. Out: the serialised result itself when it fits, else a small dict with a presigned URL
(when BUCKET_ENDPOINT_URL is set, RunPod's convention), else `OutputTooLarge`.
"""

from __future__ import annotations

import json
from typing import Any

from .errors import OutputTooLarge, UploadFailed
from .settings import Settings

PRESIGN_SECONDS = 7 * 24 * 3600


def fit_output(output: dict[str, Any], *, job_id: str, settings: Settings, name: str = "result") -> dict[str, Any]:
    body = json.dumps(output, ensure_ascii=False).encode("utf-8")
    if len(body) <= settings.max_output_bytes:
        return output
    if not settings.bucket_endpoint_url:
        raise OutputTooLarge(
            f"the result is {len(body)} bytes, over MAX_OUTPUT_BYTES ({settings.max_output_bytes}); "
            "set STREAM_PAGES=true and read /stream page by page, select fewer 'pages', or configure "
            "BUCKET_ENDPOINT_URL so large results are uploaded")
    url = upload_json(body, key=f"{job_id or 'job'}/{name}.json", settings=settings)
    summary = {k: v for k, v in output.items() if k not in ("pages", "text", "markdown", "blocks", "figures",
                                                             "annotated_png_base64", "raw")}
    return {**summary, "output_url": url, "output_bytes": len(body)}


def upload_json(body: bytes, *, key: str, settings: Settings) -> str:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    endpoint, _, bucket = settings.bucket_endpoint_url.rstrip("/").rpartition("/")
    if not endpoint.startswith(("http://", "https://")):
        raise UploadFailed("BUCKET_ENDPOINT_URL must look like https://host/bucket")
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=settings.bucket_access_key_id,
                          aws_secret_access_key=settings.bucket_secret_access_key,
                          config=Config(signature_version="s3v4", retries={"max_attempts": 3}),
                          region_name="us-east-1")
    try:
        client.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json")
        return client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key},
                                             ExpiresIn=PRESIGN_SECONDS)
    except (BotoCoreError, ClientError) as exc:
        raise UploadFailed(f"uploading the large result failed: {exc}") from None
