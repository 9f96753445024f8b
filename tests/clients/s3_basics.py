"""boto3 (its defaults: CRC32 checksums in aws-chunked trailers) against
storaged's S3 API. Prints what it saw as JSON; the Rust test judges it.

Usage: s3_basics.py ENDPOINT ACCESS SECRET OTHER_ACCESS OTHER_SECRET
"""
import hashlib
import json
import sys
import urllib.error
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
# Multipart: boto3's managed transfer splits a 12 MiB file into 5 MiB parts.
import os
import tempfile

from boto3.s3.transfer import TransferConfig

s3.create_bucket(Bucket="bucket-two")
big = os.urandom(12 << 20)
with tempfile.TemporaryDirectory() as d:
    src, dst = os.path.join(d, "big"), os.path.join(d, "back")
    with open(src, "wb") as f:
        f.write(big)
    cfg = TransferConfig(multipart_threshold=5 << 20, multipart_chunksize=5 << 20)
    s3.upload_file(src, "bucket-two", "big.bin", Config=cfg)
    s3.download_file("bucket-two", "big.bin", dst, Config=cfg)
    with open(dst, "rb") as f:
        out["multipart_back"] = f.read() == big
md5s = b"".join(hashlib.md5(big[i:i + (5 << 20)]).digest() for i in range(0, len(big), 5 << 20))
out["multipart_etag_ok"] = s3.head_object(Bucket="bucket-two", Key="big.bin")["ETag"] == '"%s-3"' % hashlib.md5(md5s).hexdigest()
up = s3.create_multipart_upload(Bucket="bucket-two", Key="parts")["UploadId"]
p1 = s3.upload_part(Bucket="bucket-two", Key="parts", UploadId=up, PartNumber=1, Body=b"a" * 1024)["ETag"]
p2 = s3.upload_part(Bucket="bucket-two", Key="parts", UploadId=up, PartNumber=2, Body=b"b" * 1024)["ETag"]
out["uploads"] = [u["Key"] for u in s3.list_multipart_uploads(Bucket="bucket-two").get("Uploads", [])]
out["parts"] = [p["PartNumber"] for p in s3.list_parts(Bucket="bucket-two", Key="parts", UploadId=up)["Parts"]]
done = lambda parts: code(lambda: s3.complete_multipart_upload(Bucket="bucket-two", Key="parts", UploadId=up, MultipartUpload={"Parts": parts}))
out["too_small"] = done([{"PartNumber": 1, "ETag": p1}, {"PartNumber": 2, "ETag": p2}])
out["wrong_etag"] = done([{"PartNumber": 1, "ETag": '"00000000000000000000000000000000"'}])
out["wrong_order"] = done([{"PartNumber": 2, "ETag": p2}, {"PartNumber": 1, "ETag": p1}])
out["one_part"] = done([{"PartNumber": 2, "ETag": p2}])
out["one_part_back"] = s3.get_object(Bucket="bucket-two", Key="parts")["Body"].read() == b"b" * 1024
# Copies: whole objects (metadata kept or replaced) and parts from ranges.
s3.copy_object(Bucket="bucket-two", Key="copy", CopySource={"Bucket": "bucket-one", "Key": "dir/a.bin"})
c = s3.get_object(Bucket="bucket-two", Key="copy")
out["copy_ok"] = [c["Body"].read() == data, c["Metadata"], c["ContentType"]]
s3.copy_object(Bucket="bucket-two", Key="copy", CopySource={"Bucket": "bucket-two", "Key": "copy"},
               MetadataDirective="REPLACE", Metadata={"new": "yes"}, ContentType="text/plain")
c = s3.head_object(Bucket="bucket-two", Key="copy")
out["copy_replaced"] = [c["Metadata"], c["ContentType"], c["ContentLength"]]
out["copy_self"] = code(lambda: s3.copy_object(Bucket="bucket-two", Key="copy", CopySource={"Bucket": "bucket-two", "Key": "copy"}))
out["copy_missing"] = code(lambda: s3.copy_object(Bucket="bucket-two", Key="c2", CopySource={"Bucket": "bucket-two", "Key": "nope"}))
out["copy_if_match"] = code(lambda: s3.copy_object(Bucket="bucket-two", Key="c2", CopySource={"Bucket": "bucket-two", "Key": "copy"}, CopySourceIfMatch='"0000"'))
up3 = s3.create_multipart_upload(Bucket="bucket-two", Key="joined")["UploadId"]
q1 = s3.upload_part_copy(Bucket="bucket-two", Key="joined", UploadId=up3, PartNumber=1,
                         CopySource={"Bucket": "bucket-two", "Key": "big.bin"}, CopySourceRange="bytes=0-%d" % ((5 << 20) - 1))["CopyPartResult"]["ETag"]
q2 = s3.upload_part_copy(Bucket="bucket-two", Key="joined", UploadId=up3, PartNumber=2,
                         CopySource={"Bucket": "bucket-one", "Key": "top.txt"})["CopyPartResult"]["ETag"]
out["bad_range"] = code(lambda: s3.upload_part_copy(Bucket="bucket-two", Key="joined", UploadId=up3, PartNumber=3,
                                                    CopySource={"Bucket": "bucket-one", "Key": "top.txt"}, CopySourceRange="bytes=0-99"))
s3.complete_multipart_upload(Bucket="bucket-two", Key="joined", UploadId=up3,
                             MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": q1}, {"PartNumber": 2, "ETag": q2}]})
out["joined_ok"] = s3.get_object(Bucket="bucket-two", Key="joined")["Body"].read() == big[: 5 << 20] + b"top"
out["other_copy"] = code(lambda: other.copy_object(Bucket="bucket-two", Key="x", CopySource={"Bucket": "bucket-one", "Key": "top.txt"}))
s3.delete_objects(Bucket="bucket-two", Delete={"Objects": [{"Key": "copy"}, {"Key": "joined"}]})
up2 = s3.create_multipart_upload(Bucket="bucket-two", Key="dropped")["UploadId"]
s3.upload_part(Bucket="bucket-two", Key="dropped", UploadId=up2, PartNumber=1, Body=b"x")
s3.abort_multipart_upload(Bucket="bucket-two", Key="dropped", UploadId=up2)
out["aborted"] = code(lambda: s3.list_parts(Bucket="bucket-two", Key="dropped", UploadId=up2))
out["other_upload"] = code(lambda: other.create_multipart_upload(Bucket="bucket-two", Key="x"))
s3.delete_objects(Bucket="bucket-two", Delete={"Objects": [{"Key": "big.bin"}, {"Key": "parts"}]})
s3.delete_bucket(Bucket="bucket-two")
# Public buckets: anyone lists them and reads their objects, nothing more.
def anonymous(method, path):
    req = urllib.request.Request(endpoint + path, method=method, data=b"x" if method == "PUT" else None)
    try:
        with urllib.request.urlopen(req) as r:
            return [r.status, r.read().decode(errors="replace")[:200]]
    except urllib.error.HTTPError as e:
        return [e.code, ""]


s3.create_bucket(Bucket="bucket-pub", ACL="public-read")
s3.put_object(Bucket="bucket-pub", Key="hello.txt", Body=b"hello world")
out["anon_get"] = anonymous("GET", "/bucket-pub/hello.txt")
out["anon_list"] = anonymous("GET", "/bucket-pub?list-type=2")[0]
out["anon_put"] = anonymous("PUT", "/bucket-pub/new.txt")[0]
out["anon_private"] = anonymous("GET", "/bucket-one/top.txt")[0]
out["anon_buckets"] = anonymous("GET", "/")[0]
out["acl"] = sorted(g["Permission"] for g in s3.get_bucket_acl(Bucket="bucket-pub")["Grants"])
s3.put_bucket_acl(Bucket="bucket-pub", ACL="private")
out["anon_after_private"] = anonymous("GET", "/bucket-pub/hello.txt")[0]
out["other_acl"] = code(lambda: other.put_bucket_acl(Bucket="bucket-pub", ACL="public-read"))
s3.delete_object(Bucket="bucket-pub", Key="hello.txt")
s3.delete_bucket(Bucket="bucket-pub")
# Bad input the SDK would not send, signed as it would be.
def signed(method, path, body=b"", headers=None, host=None):
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    import http.client
    import urllib.parse

    headers = dict(headers or {})
    headers.setdefault("x-amz-content-sha256", "UNSIGNED-PAYLOAD")
    url = urllib.parse.urlsplit(endpoint)
    # A virtual-host-style request names the bucket in Host (no DNS here:
    # it is sent to the endpoint's address all the same).
    signed_url = f"http://{host}:{url.port}{path}" if host else endpoint + path
    req = AWSRequest(method=method, url=signed_url, data=body, headers=headers)
    SigV4Auth(Credentials(access, secret), "s3", "us-east-1").add_auth(req)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    conn.putheader("Host", urllib.parse.urlsplit(signed_url).netloc)
    for k, v in req.headers.items():
        conn.putheader(k, v)
    if "Content-Length" not in req.headers:
        conn.putheader("Content-Length", str(len(body)))
    conn.endheaders()
    try:
        conn.send(body)
        r = conn.getresponse()
        text = r.read().decode(errors="replace")
    except (BrokenPipeError, ConnectionResetError):
        return "connection closed"
    if r.status == 200 and method == "GET":
        return text
    code_start = text.find("<Code>")
    return text[code_start + 6 : text.find("</Code>")] if code_start >= 0 else str(r.status)


out["virtual_host"] = [
    signed("GET", "/top.txt", host="bucket-one.s3.test"),
    signed("PUT", "/", host="bucket-one.s3.test"),
]
bad_xml = b"<Delete><Object><Key>top.txt</Key>"
out["malformed_xml"] = signed(
    "POST", "/bucket-one?delete", bad_xml,
    {"Content-MD5": __import__("base64").b64encode(hashlib.md5(bad_xml).digest()).decode()},
)
out["bad_names"] = [code(lambda n=n: s3.create_bucket(Bucket=n)) for n in ["ab", "Bad_Name", "a..b", "-dash", "x" * 64]]
up3 = s3.create_multipart_upload(Bucket="bucket-one", Key="huge")["UploadId"]
out["oversize_part"] = signed(
    "PUT", f"/bucket-one/huge?partNumber=1&uploadId={up3}", b"x",
    {"Content-Length": str((5 << 30) + 1)},
)
s3.abort_multipart_upload(Bucket="bucket-one", Key="huge", UploadId=up3)
short = s3.generate_presigned_url("get_object", Params={"Bucket": "bucket-one", "Key": "top.txt"}, ExpiresIn=1)
__import__("time").sleep(2.5)
try:
    urllib.request.urlopen(short)
    out["presigned_expired"] = "ok"
except urllib.error.HTTPError as e:
    out["presigned_expired"] = [e.code, "expired" in e.read().decode(errors="replace").lower()]
out["keys_after_bad_input"] = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="bucket-one").get("Contents", []))
out["not_empty"] = code(lambda: s3.delete_bucket(Bucket="bucket-one"))
d = s3.delete_objects(Bucket="bucket-one", Delete={"Objects": [{"Key": k} for k in keys]})
out["deleted"] = sorted(x["Key"] for x in d.get("Deleted", []))
s3.delete_bucket(Bucket="bucket-one")
out["buckets_after"] = [b["Name"] for b in s3.list_buckets()["Buckets"]]
print(json.dumps(out))
