"""Creates BUCKET on the S3 server at ENDPOINT and puts FILE there as KEY, with boto3 (the AWS
SDK), as a user uploads a model to their bucket.

Usage: s3_put.py ENDPOINT BUCKET KEY FILE
"""

import sys

import boto3

endpoint, bucket, key, path = sys.argv[1:5]
s3 = boto3.client(
    "s3",
    endpoint_url=endpoint,
    region_name="us-east-1",
    aws_access_key_id="testing",
    aws_secret_access_key="testing",
)
s3.create_bucket(Bucket=bucket)
s3.upload_file(path, bucket, key)
print(s3.head_object(Bucket=bucket, Key=key)["ContentLength"])
