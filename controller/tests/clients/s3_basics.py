"""boto3 (its defaults: CRC32 checksums in aws-chunked trailers) against
storaged's S3 API. Prints what it saw as JSON; the Rust test judges it.

Usage: s3_basics.py ENDPOINT ACCESS SECRET OTHER_ACCESS OTHER_SECRET
"""
import hashlib
import json
import sys
import urllib.request

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

endpoint, access, secret, other_access, other_secret = sys.argv[1:6]


def client(a, s):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=a,
        aws_secret_access_key=s,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )


def code(f):
    try:
        f()
        return "ok"
    except ClientError as e:
        return e.response["Error"]["Code"]


s3 = client(access, secret)
out = {}
s3.create_bucket(Bucket="bucket-one")
out["create_again"] = code(lambda: s3.create_bucket(Bucket="bucket-one"))
data = bytes(range(256)) * 4096 + b"tail"
r = s3.put_object(Bucket="bucket-one", Key="dir/a.bin", Body=data, Metadata={"k": "v"}, ContentType="application/x-test")
out["etag_ok"] = r["ETag"] == '"%s"' % hashlib.md5(data).hexdigest()
out["crc32"] = r.get("ChecksumCRC32")
s3.put_object(Bucket="bucket-one", Key="dir/b.txt", Body=b"hello")
s3.put_object(Bucket="bucket-one", Key="top.txt", Body=b"top", ChecksumAlgorithm="SHA256")
g = s3.get_object(Bucket="bucket-one", Key="dir/a.bin")
out["get_ok"] = g["Body"].read() == data
out["meta"] = g["Metadata"]
out["ctype"] = g["ContentType"]
out["range_ok"] = s3.get_object(Bucket="bucket-one", Key="dir/a.bin", Range="bytes=65500-65600")["Body"].read() == data[65500:65601]
out["suffix_ok"] = s3.get_object(Bucket="bucket-one", Key="dir/a.bin", Range="bytes=-4")["Body"].read() == b"tail"
top = s3.list_objects_v2(Bucket="bucket-one", Delimiter="/")
out["list_keys"] = [o["Key"] for o in top.get("Contents", [])]
out["prefixes"] = [p["Prefix"] for p in top.get("CommonPrefixes", [])]
keys, token = [], None
while True:
    kw = {"Bucket": "bucket-one", "MaxKeys": 1}
    if token:
        kw["ContinuationToken"] = token
    page = s3.list_objects_v2(**kw)
    keys += [o["Key"] for o in page.get("Contents", [])]
    if not page["IsTruncated"]:
        break
    token = page["NextContinuationToken"]
out["paged"] = keys
out["v1"] = [o["Key"] for o in s3.list_objects(Bucket="bucket-one", Prefix="dir/")["Contents"]]
h = s3.head_object(Bucket="bucket-one", Key="dir/b.txt")
out["head_len"] = h["ContentLength"]
out["if_none_match"] = code(lambda: s3.get_object(Bucket="bucket-one", Key="dir/b.txt", IfNoneMatch=h["ETag"]))
out["if_match_bad"] = code(lambda: s3.get_object(Bucket="bucket-one", Key="dir/b.txt", IfMatch='"0000"'))
out["missing"] = code(lambda: s3.get_object(Bucket="bucket-one", Key="nope"))
out["no_bucket"] = code(lambda: s3.get_object(Bucket="nobucket", Key="nope"))
out["bad_md5"] = code(lambda: s3.put_object(Bucket="bucket-one", Key="bad", Body=b"x", ContentMD5="AAAAAAAAAAAAAAAAAAAAAA=="))
out["bad_crc"] = code(lambda: s3.put_object(Bucket="bucket-one", Key="bad", Body=b"x", ChecksumCRC32="AAAAAA=="))
out["bad_left"] = code(lambda: s3.head_object(Bucket="bucket-one", Key="bad"))
other = client(other_access, other_secret)
out["other_get"] = code(lambda: other.get_object(Bucket="bucket-one", Key="top.txt"))
out["other_put"] = code(lambda: other.put_object(Bucket="bucket-one", Key="x", Body=b"x"))
out["other_buckets"] = [b["Name"] for b in other.list_buckets()["Buckets"]]
out["other_create"] = code(lambda: other.create_bucket(Bucket="bucket-one"))
out["bad_sig"] = code(lambda: client(access, "wrong" + secret).list_buckets())
out["unknown_key"] = code(lambda: client("0123456789abcdef0123456789abcdef", secret).list_buckets())
url = s3.generate_presigned_url("get_object", Params={"Bucket": "bucket-one", "Key": "top.txt"}, ExpiresIn=60)
out["presigned"] = urllib.request.urlopen(url).read().decode()
try:
    urllib.request.urlopen(url.replace("Signature=", "Signature=0"))
    out["presigned_tampered"] = "ok"
except urllib.error.HTTPError as e:
    out["presigned_tampered"] = e.code
out["not_empty"] = code(lambda: s3.delete_bucket(Bucket="bucket-one"))
d = s3.delete_objects(Bucket="bucket-one", Delete={"Objects": [{"Key": k} for k in keys]})
out["deleted"] = sorted(x["Key"] for x in d.get("Deleted", []))
s3.delete_bucket(Bucket="bucket-one")
out["buckets_after"] = [b["Name"] for b in s3.list_buckets()["Buckets"]]
print(json.dumps(out))
