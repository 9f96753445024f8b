"""The client side of the S3 crash trials (controller/tests/crash_trials.rs).

s3_crash.py work ENDPOINT ACCESS SECRET BUCKET SEED
    PUTs and DELETEs random keys until a request fails (storaged killed),
    printing "begin put KEY MD5" / "ack put KEY MD5" (and "begin del KEY" /
    "ack del KEY") around each request, flushed.
s3_crash.py check ENDPOINT ACCESS SECRET BUCKET
    Prints {key: md5 of its data} for every object in the bucket as JSON
    (every GET reads the whole object, checked by storaged).
s3_crash.py ready ENDPOINT ACCESS SECRET BUCKET SECONDS
    Waits (at most SECONDS) until the store answers signed requests, then
    makes the bucket if it is not there.
"""
import hashlib
import json
import random
import sys
import time

import boto3
from botocore.config import Config

mode, endpoint, access, secret, bucket = sys.argv[1:6]
s3 = boto3.client(
    "s3",
    endpoint_url=endpoint,
    aws_access_key_id=access,
    aws_secret_access_key=secret,
    region_name="us-east-1",
    config=Config(
        s3={"addressing_style": "path"},
        retries={"max_attempts": 1},
        connect_timeout=2,
        read_timeout=10,
    ),
)

if mode == "work":
    rng = random.Random(int(sys.argv[6]))
    while True:
        key = "k%02d" % rng.randrange(12)
        try:
            if rng.random() < 0.8:
                data = rng.randbytes(rng.choice([0, 100, 65536, 65537, 200_000, 1 << 20]))
                md5 = hashlib.md5(data).hexdigest()
                print("begin put", key, md5, flush=True)
                s3.put_object(Bucket=bucket, Key=key, Body=data)
                print("ack put", key, md5, flush=True)
            else:
                print("begin del", key, flush=True)
                s3.delete_object(Bucket=bucket, Key=key)
                print("ack del", key, flush=True)
        except Exception as e:  # the kill: stop here
            print("failed", type(e).__name__, flush=True)
            break
elif mode == "ready":
    deadline = time.time() + float(sys.argv[6])
    while True:
        try:
            names = [b["Name"] for b in s3.list_buckets()["Buckets"]]
            break
        except Exception as e:
            if time.time() > deadline:
                print("not ready:", type(e).__name__, e, flush=True)
                sys.exit(1)
            time.sleep(1)
    if bucket not in names:
        s3.create_bucket(Bucket=bucket)
else:
    seen = {}
    token = None
    while True:
        kw = {"Bucket": bucket}
        if token:
            kw["ContinuationToken"] = token
        page = s3.list_objects_v2(**kw)
        for o in page.get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
            seen[o["Key"]] = hashlib.md5(body).hexdigest()
        if not page["IsTruncated"]:
            break
        token = page["NextContinuationToken"]
    print(json.dumps(seen))
