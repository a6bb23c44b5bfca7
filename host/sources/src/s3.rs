//! `s3://bucket/key` sources, through `object_store`: endpoint, region and credentials from the
//! standard `AWS_*` environment variables, else the AWS shared config and credentials files
//! (`aws`), path-style requests.

use std::path::Path;

use anyhow::anyhow;

use crate::sink::{Failure, Sink};

/// One GET of `s3://bucket/key` into `partial`, checked against `sha256`.
pub(crate) fn attempt(url: &str, partial: &Path, sha256: &str) -> Result<(), Failure> {
    use futures::StreamExt;
    use object_store::ObjectStoreExt;

    let (bucket, key) = url
        .strip_prefix("s3://")
        .and_then(|rest| rest.split_once('/'))
        .filter(|(bucket, key)| !bucket.is_empty() && !key.is_empty())
        .ok_or_else(|| Failure::Permanent(anyhow!("{url}: not s3://BUCKET/KEY")))?;
    let runtime = crate::current_thread_runtime().map_err(Failure::Permanent)?;
    runtime.block_on(async {
        // Retries are this module's (the same for every source), not object_store's own.
        let retry = object_store::RetryConfig { max_retries: 0, ..Default::default() };
        let mut builder =
            object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket).with_retry(retry);
        // What the environment leaves unset comes from the AWS shared files, as the AWS CLI has it.
        let mut endpoint = std::env::var("AWS_ENDPOINT_URL").or_else(|_| std::env::var("AWS_ENDPOINT")).ok();
        for (key, value) in crate::aws::profile_settings() {
            builder = match key {
                "aws_access_key_id" => builder.with_access_key_id(value),
                "aws_secret_access_key" => builder.with_secret_access_key(value),
                "aws_session_token" => builder.with_token(value),
                "region" => builder.with_region(value),
                "endpoint_url" => {
                    endpoint = Some(value.clone());
                    builder.with_endpoint(value)
                }
                _ => builder,
            };
        }
        // An endpoint the user gave as http:// (an S3-compatible server on a private network).
        if endpoint.is_some_and(|e| e.starts_with("http://")) {
            builder = builder.with_allow_http(true);
        }
        let store = builder.build().map_err(|e| Failure::Permanent(anyhow!("{url}: {e}")))?;
        let result = store.get(&object_store::path::Path::from(key)).await.map_err(|e| {
            let error = anyhow!("{url}: {e}");
            match e {
                object_store::Error::NotFound { .. }
                | object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. } => Failure::Permanent(error),
                _ => Failure::Transient(error),
            }
        })?;
        let mut sink = Sink::create(url, partial, Some(result.meta.size))?;
        let mut stream = result.into_stream();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(bytes) => sink.write(&bytes)?,
                Err(e) => return Err(sink.broken(e)),
            }
        }
        sink.finish(sha256)
    })
}
