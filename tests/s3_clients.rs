//! The S3-compatible API driven by boto3 and the aws CLI (pip packages `boto3` and
//! `awscli`, installed on first use), as Python subprocesses.

mod common;

use std::io::Write;
use std::process::Command;
use std::sync::OnceLock;

use common::*;

fn clients_ready() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        for (module, package) in [("boto3", "boto3"), ("awscli", "awscli")] {
            nearcache_s3::testutil::ensure_python_package(module, package)
                .unwrap_or_else(|e| panic!("installing {package} for the client tests: {e}"));
        }
    });
}

fn python(script: &str, node: &TestNode, bucket: &str) -> String {
    let origin = nearcache_s3::testutil::s3_target();
    let out = Command::new("python3")
        .args(["-c", script])
        .env("NC_ENDPOINT", &node.s3_base)
        .env("NC_BUCKET", bucket)
        .env("ORIGIN_ENDPOINT", &origin.endpoint)
        .env("ORIGIN_AK", &origin.access_key)
        .env("ORIGIN_SK", &origin.secret_key)
        .env("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "script failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

const BOTO3: &str = r#"
import os, hashlib, boto3
from boto3.s3.transfer import TransferConfig
ep, b = os.environ["NC_ENDPOINT"], os.environ["NC_BUCKET"]
s3 = boto3.client("s3", endpoint_url=ep)
origin = boto3.client("s3", endpoint_url=os.environ["ORIGIN_ENDPOINT"],
    aws_access_key_id=os.environ["ORIGIN_AK"], aws_secret_access_key=os.environ["ORIGIN_SK"],
    region_name="us-east-1")
body = os.urandom(100_000)
r = s3.put_object(Bucket=b, Key="boto/one", Body=body, ContentType="text/x-boto", Metadata={"who": "boto"})
assert r["ETag"] == '"%s"' % hashlib.md5(body).hexdigest(), r
o = s3.get_object(Bucket=b, Key="boto/one")
assert o["Body"].read() == body
assert o["ContentType"] == "text/x-boto" and o["Metadata"] == {"who": "boto"}, o
assert origin.head_object(Bucket=b, Key="boto/one")["ETag"] == r["ETag"]
keys = [c["Key"] for c in s3.list_objects_v2(Bucket=b, Prefix="boto/")["Contents"]]
assert keys == ["boto/one"], keys
# multipart through the transfer manager: 12 MiB in 5 MiB parts
big = os.urandom(12 << 20)
with open("/tmp/nc-boto-big-%d" % os.getpid(), "wb") as f:
    f.write(big)
cfg = TransferConfig(multipart_threshold=5 << 20, multipart_chunksize=5 << 20)
s3.upload_file(f.name, b, "boto/big", Config=cfg)
os.remove(f.name)
h = s3.head_object(Bucket=b, Key="boto/big")
assert h["ETag"].endswith('-3"'), h["ETag"]
assert h["ETag"] == origin.head_object(Bucket=b, Key="boto/big")["ETag"]
assert s3.get_object(Bucket=b, Key="boto/big")["Body"].read() == big
s3.delete_object(Bucket=b, Key="boto/one")
r = s3.delete_objects(Bucket=b, Delete={"Objects": [{"Key": "boto/big"}]})
assert [d["Key"] for d in r["Deleted"]] == ["boto/big"], r
assert s3.list_objects_v2(Bucket=b, Prefix="boto/")["KeyCount"] == 0
try:
    s3.get_object(Bucket=b, Key="boto/one")
    raise SystemExit("deleted object still readable")
except s3.exceptions.NoSuchKey:
    pass
print("boto3 ok")
"#;

#[test]
fn boto3_put_get_list_delete_multipart() {
    clients_ready();
    let node = TestNode::start("s3-boto3");
    let bucket = node.bucket.clone();
    let out = python(BOTO3, &node, &bucket);
    assert!(out.contains("boto3 ok"), "{out}");
}

const AWSCLI: &str = r#"
import os, subprocess, hashlib, json
ep, b = os.environ["NC_ENDPOINT"], os.environ["NC_BUCKET"]
def aws(*args):
    return subprocess.run(["python3", "-m", "awscli", "--endpoint-url", ep, *args],
        check=True, capture_output=True, text=True).stdout
d = "/tmp/nc-awscli-%d" % os.getpid()
os.makedirs(d, exist_ok=True)
data = os.urandom(20 << 20)
open(d + "/big.bin", "wb").write(data)
aws("s3", "cp", d + "/big.bin", "s3://%s/cli/big.bin" % b)
h = json.loads(aws("s3api", "head-object", "--bucket", b, "--key", "cli/big.bin"))
assert h["ContentLength"] == 20 << 20 and h["ETag"].endswith('-3"'), h
aws("s3", "cp", "s3://%s/cli/big.bin" % b, d + "/back.bin")
assert open(d + "/back.bin", "rb").read() == data
open(d + "/small.txt", "w").write("hello cli")
aws("s3", "cp", d + "/small.txt", "s3://%s/cli/small.txt" % b)
ls = aws("s3", "ls", "s3://%s/cli/" % b)
assert "big.bin" in ls and "small.txt" in ls, ls
aws("s3", "rm", "s3://%s/cli/small.txt" % b)
aws("s3", "rm", "s3://%s/cli/big.bin" % b)
# `aws s3 ls` exits 1 when nothing matches.
r = subprocess.run(["python3", "-m", "awscli", "--endpoint-url", ep, "s3", "ls", "s3://%s/cli/" % b],
    capture_output=True, text=True)
assert r.stdout.strip() == "", r.stdout
for f in ("big.bin", "back.bin", "small.txt"):
    os.remove(d + "/" + f)
os.rmdir(d)
print("awscli ok")
"#;

#[test]
fn awscli_cp_ls_rm_with_multipart() {
    clients_ready();
    let node = TestNode::start("s3-awscli");
    let bucket = node.bucket.clone();
    let out = python(AWSCLI, &node, &bucket);
    assert!(out.contains("awscli ok"), "{out}");
    let _ = std::io::stdout().flush();
}

/// A node whose own bucket (the one the scripts get) is `public_read`, plus a second,
/// write-behind bucket named `<bucket>-wb`.
fn conformance_node(tag: &str) -> TestNode {
    TestNode::start_with(tag, |cfg| {
        let b = cfg.origin.bucket.clone().expect("the test bucket");
        cfg.s3api.buckets = vec![
            nearcache::config::S3BucketConfig {
                name: b.clone(),
                write_behind: false,
                public_read: true,
                ..Default::default()
            },
            nearcache::config::S3BucketConfig {
                name: format!("{b}-wb"),
                write_behind: true,
                public_read: false,
                ..Default::default()
            },
        ];
    })
}

/// The S3 behaviours of issue 17 through boto3, each as the S3 API reference describes it.
const BOTO3_CONFORMANCE: &str = r#"
import os, hashlib, datetime, time, urllib.request, urllib.parse, boto3, botocore
from botocore.config import Config
ep, b = os.environ["NC_ENDPOINT"], os.environ["NC_BUCKET"]
s3 = boto3.client("s3", endpoint_url=ep)
origin = boto3.client("s3", endpoint_url=os.environ["ORIGIN_ENDPOINT"],
    aws_access_key_id=os.environ["ORIGIN_AK"], aws_secret_access_key=os.environ["ORIGIN_SK"],
    region_name="us-east-1")
def code(f):
    try:
        f()
    except botocore.exceptions.ClientError as e:
        return e.response["ResponseMetadata"]["HTTPStatusCode"], e.response["Error"]["Code"]
    raise SystemExit("expected an error")

# Unversioned bucket: versions, versioning, ACLs, lifecycle, policy, tags.
for k in ("t/a", "t/b"):
    s3.put_object(Bucket=b, Key=k, Body=k.encode())
assert "Status" not in s3.get_bucket_versioning(Bucket=b)
v = s3.list_object_versions(Bucket=b, Prefix="t/")
assert [(x["Key"], x["VersionId"], x["IsLatest"]) for x in v["Versions"]] == [("t/a", "null", True), ("t/b", "null", True)], v
assert "DeleteMarkers" not in v, v
assert s3.get_bucket_acl(Bucket=b)["Grants"][0]["Permission"] == "FULL_CONTROL"
assert s3.get_object_acl(Bucket=b, Key="t/a")["Grants"][0]["Permission"] == "FULL_CONTROL"
assert code(lambda: s3.get_bucket_lifecycle_configuration(Bucket=b)) == (404, "NoSuchLifecycleConfiguration")
assert code(lambda: s3.get_bucket_policy(Bucket=b)) == (404, "NoSuchBucketPolicy")
s3.put_object_tagging(Bucket=b, Key="t/a", Tagging={"TagSet": [{"Key": "k", "Value": "v 1"}]})
assert s3.get_object_tagging(Bucket=b, Key="t/a")["TagSet"] == [{"Key": "k", "Value": "v 1"}]
assert origin.get_object_tagging(Bucket=b, Key="t/a")["TagSet"] == [{"Key": "k", "Value": "v 1"}]

# partNumber.
p1, p2 = os.urandom(5 << 20), os.urandom(777)
up = s3.create_multipart_upload(Bucket=b, Key="mp")["UploadId"]
e1 = s3.upload_part(Bucket=b, Key="mp", UploadId=up, PartNumber=1, Body=os.urandom(5 << 20))["ETag"]
e1 = s3.upload_part(Bucket=b, Key="mp", UploadId=up, PartNumber=1, Body=p1)["ETag"]  # re-sent: the last counts
e2 = s3.upload_part(Bucket=b, Key="mp", UploadId=up, PartNumber=2, Body=p2)["ETag"]
assert code(lambda: s3.complete_multipart_upload(Bucket=b, Key="t/a", UploadId=up, IfNoneMatch="*",
    MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]})) == (412, "PreconditionFailed")
s3.complete_multipart_upload(Bucket=b, Key="mp", UploadId=up, IfNoneMatch="*",
    MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]})
assert s3.get_object(Bucket=b, Key="mp")["Body"].read() == p1 + p2
r = s3.get_object(Bucket=b, Key="mp", PartNumber=2)
assert r["Body"].read() == p2 and r["PartsCount"] == 2 and r["ContentRange"] == "bytes %d-%d/%d" % (len(p1), len(p1) + len(p2) - 1, len(p1) + len(p2)), r
h = s3.head_object(Bucket=b, Key="mp", PartNumber=1)
assert h["ContentLength"] == len(p1) and h["PartsCount"] == 2, h
assert code(lambda: s3.get_object(Bucket=b, Key="mp", PartNumber=3)) == (416, "InvalidPartNumber")
assert code(lambda: s3.complete_multipart_upload(Bucket=b, Key="mp", UploadId="nope",
    MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1}]})) == (404, "NoSuchUpload")

# Conditional writes and copies.
et = s3.head_object(Bucket=b, Key="t/a")["ETag"]
assert code(lambda: s3.put_object(Bucket=b, Key="t/a", Body=b"x", IfMatch='"00"')) == (412, "PreconditionFailed")
s3.put_object(Bucket=b, Key="t/a", Body=b"t/a", IfMatch=et)
src = {"Bucket": b, "Key": "t/a"}
past, future = datetime.datetime(2000, 1, 1), datetime.datetime(2100, 1, 1)
for kw in ({"CopySourceIfMatch": '"00"'}, {"CopySourceIfNoneMatch": et},
           {"CopySourceIfModifiedSince": future}, {"CopySourceIfUnmodifiedSince": past}):
    assert code(lambda: s3.copy_object(Bucket=b, Key="t/c", CopySource=src, **kw)) == (412, "PreconditionFailed"), kw
s3.copy_object(Bucket=b, Key="t/c", CopySource=src, CopySourceIfMatch=et, CopySourceIfModifiedSince=past)
up = s3.create_multipart_upload(Bucket=b, Key="upc")["UploadId"]
assert code(lambda: s3.upload_part_copy(Bucket=b, Key="upc", UploadId=up, PartNumber=1, CopySource=src,
    CopySourceIfMatch='"00"')) == (412, "PreconditionFailed")
assert code(lambda: s3.upload_part_copy(Bucket=b, Key="upc", UploadId=up, PartNumber=1, CopySource=src,
    CopySourceRange="bytes=0-3")) == (416, "InvalidRange")
s3.abort_multipart_upload(Bucket=b, Key="upc", UploadId=up)

# Content-MD5 and aws-chunked.
assert code(lambda: s3.put_object(Bucket=b, Key="md5", Body=b"x", ContentMD5="bad")) == (400, "InvalidDigest")
assert code(lambda: s3.put_object(Bucket=b, Key="md5", Body=b"x", ContentMD5="1B2M2Y8AsgTpgAmY7PhCfg==")) == (400, "BadDigest")
s3.put_object(Bucket=b, Key="gz", Body=b"x", ContentEncoding="gzip, aws-chunked")
assert s3.get_object(Bucket=b, Key="gz")["ContentEncoding"] == "gzip"

# Control characters in listings (boto3 asks encoding-type=url and decodes), empty token.
ctl = ["ctl/a\x01b", "ctl/c\rd", "ctl/plain"]
for k in ctl:
    s3.put_object(Bucket=b, Key=k, Body=b"c")
assert [o["Key"] for o in s3.list_objects_v2(Bucket=b, Prefix="ctl/")["Contents"]] == sorted(ctl)
assert [o["Key"] for o in s3.list_objects(Bucket=b, Prefix="ctl/")["Contents"]] == sorted(ctl)
assert s3.list_objects_v2(Bucket=b, Prefix="ctl/", ContinuationToken="")["KeyCount"] == 3

# Special keys: PUT (write-through and write-behind), GET, read-through, list, copies.
wb = b + "-wb"
s3.create_bucket(Bucket=wb)
keys = ["sp ace", "plus+sign", "per%cent", "ünï/cødé", "what?now", "hash#tag", "double//slash", "trailing/"]
for k in keys:
    body = ("body " + k).encode()
    for bk in (b, wb):
        s3.put_object(Bucket=bk, Key="k/" + k, Body=body)
        assert s3.get_object(Bucket=bk, Key="k/" + k)["Body"].read() == body, (bk, k)
    origin.put_object(Bucket=b, Key="o/" + k, Body=body)
    assert s3.get_object(Bucket=b, Key="o/" + k)["Body"].read() == body, k
    s3.copy_object(Bucket=b, Key="c/" + k, CopySource={"Bucket": b, "Key": "o/" + k})
    assert s3.get_object(Bucket=b, Key="c/" + k)["Body"].read() == body, k
    up = s3.create_multipart_upload(Bucket=b, Key="m/" + k)["UploadId"]
    e = s3.upload_part_copy(Bucket=b, Key="m/" + k, UploadId=up, PartNumber=1,
        CopySource={"Bucket": b, "Key": "k/" + k})["CopyPartResult"]["ETag"]
    s3.complete_multipart_upload(Bucket=b, Key="m/" + k, UploadId=up, MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e}]})
    assert s3.get_object(Bucket=b, Key="m/" + k)["Body"].read() == body, k
listed = set()
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=b):
    listed |= {o["Key"] for o in page.get("Contents", [])}
for k in keys:
    for p in ("k/", "o/", "c/", "m/"):
        assert p + k in listed, (p + k, listed)
deadline = time.time() + 20
while {"k/" + k for k in keys} - {o["Key"] for o in origin.list_objects_v2(Bucket=wb).get("Contents", [])}:
    assert time.time() < deadline, "write-behind uploads never reached the origin"
    time.sleep(0.1)

# Public read: unsigned clients read from the cache; writes still need a signature.
anon = boto3.client("s3", endpoint_url=ep, config=Config(signature_version=botocore.UNSIGNED))
assert anon.get_object(Bucket=b, Key="k/sp ace")["Body"].read() == b"body sp ace"
assert "k/plus+sign" in [o["Key"] for o in anon.list_objects_v2(Bucket=b, Prefix="k/")["Contents"]]
assert urllib.request.urlopen(ep + "/" + b + "/" + urllib.parse.quote("k/ünï/cødé")).read() == "body ünï/cødé".encode()
assert code(lambda: anon.put_object(Bucket=b, Key="anon", Body=b"x")) == (403, "AccessDenied")
assert code(lambda: anon.get_object(Bucket=wb, Key="k/sp ace")) == (403, "AccessDenied")
# Cleanup as test harnesses do it: every version listed, deleted by key and VersionId
# (quietly: a DeleteResult naming a key with a control character cannot be XML 1.0, and
# botocore cannot parse it, from S3 either).
vs = s3.list_object_versions(Bucket=b, Prefix="ctl/")
r = s3.delete_objects(Bucket=b, Delete={"Quiet": True,
    "Objects": [{"Key": v["Key"], "VersionId": v["VersionId"]} for v in vs["Versions"]]})
assert "Errors" not in r and "Deleted" not in r, r
s3.delete_object(Bucket=b, Key="t/c", VersionId="null")
assert "Versions" not in s3.list_object_versions(Bucket=b, Prefix="ctl/")
assert "Contents" not in s3.list_objects_v2(Bucket=b, Prefix="t/c")
print("boto3 conformance ok")
"#;

#[test]
fn boto3_s3_conformance() {
    clients_ready();
    let node = conformance_node("s3-boto3-conf");
    let bucket = node.bucket.clone();
    let out = python(BOTO3_CONFORMANCE, &node, &bucket);
    assert!(out.contains("boto3 conformance ok"), "{out}");
}

/// The same behaviours through the aws CLI (`s3api` and `s3` commands).
const AWSCLI_CONFORMANCE: &str = r#"
import os, subprocess, json, base64
ep, b = os.environ["NC_ENDPOINT"], os.environ["NC_BUCKET"]
def run(*args):
    return subprocess.run(["python3", "-m", "awscli", "--endpoint-url", ep, *args], capture_output=True, text=True)
def aws(*args):
    r = run(*args)
    assert r.returncode == 0, (args, r.stderr)
    return json.loads(r.stdout) if r.stdout.strip().startswith("{") else r.stdout
def fails(code, *args):
    r = run(*args)
    assert r.returncode != 0 and "(%s)" % code in r.stderr, (args, code, r.stderr)
d = "/tmp/nc-awscli-conf-%d" % os.getpid()
os.makedirs(d, exist_ok=True)
open(d + "/one", "wb").write(b"one")
aws("s3api", "put-object", "--bucket", b, "--key", "v/one", "--body", d + "/one")
assert aws("s3api", "get-bucket-versioning", "--bucket", b).strip() == ""
v = aws("s3api", "list-object-versions", "--bucket", b, "--prefix", "v/")
assert [(x["Key"], x["VersionId"]) for x in v["Versions"]] == [("v/one", "null")], v
assert aws("s3api", "get-bucket-acl", "--bucket", b)["Grants"][0]["Permission"] == "FULL_CONTROL"
assert aws("s3api", "get-object-acl", "--bucket", b, "--key", "v/one")["Grants"][0]["Permission"] == "FULL_CONTROL"
fails("NoSuchLifecycleConfiguration", "s3api", "get-bucket-lifecycle-configuration", "--bucket", b)
fails("NoSuchBucketPolicy", "s3api", "get-bucket-policy", "--bucket", b)
aws("s3api", "put-object-tagging", "--bucket", b, "--key", "v/one", "--tagging", "TagSet=[{Key=a,Value=b}]")
assert aws("s3api", "get-object-tagging", "--bucket", b, "--key", "v/one")["TagSet"] == [{"Key": "a", "Value": "b"}]

# partNumber on a multipart object (the CLI uploads 20 MiB in 8 MiB parts).
data = os.urandom(20 << 20)
open(d + "/big", "wb").write(data)
aws("s3", "cp", d + "/big", "s3://%s/big" % b)
g = aws("s3api", "get-object", "--bucket", b, "--key", "big", "--part-number", "2", d + "/part2")
assert open(d + "/part2", "rb").read() == data[8 << 20:16 << 20] and g["PartsCount"] == 3, g
h = aws("s3api", "head-object", "--bucket", b, "--key", "big", "--part-number", "3")
assert h["ContentLength"] == 4 << 20 and h["PartsCount"] == 3, h
fails("InvalidPartNumber", "s3api", "get-object", "--bucket", b, "--key", "big", "--part-number", "4", d + "/x")

# Conditional writes and copies.
fails("PreconditionFailed", "s3api", "put-object", "--bucket", b, "--key", "v/one", "--body", d + "/one", "--if-match", '"00"')
fails("PreconditionFailed", "s3api", "copy-object", "--bucket", b, "--key", "v/c", "--copy-source", b + "/v/one", "--copy-source-if-match", '"00"')
fails("PreconditionFailed", "s3api", "copy-object", "--bucket", b, "--key", "v/c", "--copy-source", b + "/v/one", "--copy-source-if-unmodified-since", "2000-01-01T00:00:00Z")
up = aws("s3api", "create-multipart-upload", "--bucket", b, "--key", "v/mp")["UploadId"]
fails("InvalidRange", "s3api", "upload-part-copy", "--bucket", b, "--key", "v/mp", "--upload-id", up, "--part-number", "1", "--copy-source", b + "/v/one", "--copy-source-range", "bytes=0-9")
fails("PreconditionFailed", "s3api", "upload-part-copy", "--bucket", b, "--key", "v/mp", "--upload-id", up, "--part-number", "1", "--copy-source", b + "/v/one", "--copy-source-if-none-match", "*")
# A part uploaded twice is its last upload; If-None-Match: * on completion of an existing key.
up = aws("s3api", "create-multipart-upload", "--bucket", b, "--key", "v/one")["UploadId"]
open(d + "/p-old", "wb").write(b"old part")
open(d + "/p-new", "wb").write(b"new part")
aws("s3api", "upload-part", "--bucket", b, "--key", "v/one", "--upload-id", up, "--part-number", "1", "--body", d + "/p-old")
e = aws("s3api", "upload-part", "--bucket", b, "--key", "v/one", "--upload-id", up, "--part-number", "1", "--body", d + "/p-new")["ETag"]
open(d + "/mp.json", "w").write(json.dumps({"Parts": [{"PartNumber": 1, "ETag": e}]}))
fails("PreconditionFailed", "s3api", "complete-multipart-upload", "--bucket", b, "--key", "v/one", "--upload-id", up,
    "--multipart-upload", "file://" + d + "/mp.json", "--if-none-match", "*")
aws("s3api", "complete-multipart-upload", "--bucket", b, "--key", "v/one", "--upload-id", up,
    "--multipart-upload", "file://" + d + "/mp.json")
aws("s3", "cp", "s3://%s/v/one" % b, d + "/mp-back")
assert open(d + "/mp-back", "rb").read() == b"new part"
open(d + "/parts.json", "w").write(json.dumps({"Parts": [{"PartNumber": 1, "ETag": '"00"'}]}))
fails("NoSuchUpload", "s3api", "complete-multipart-upload", "--bucket", b, "--key", "v/mp", "--upload-id", "nope", "--multipart-upload", "file://" + d + "/parts.json")

# Content-MD5 and aws-chunked.
fails("InvalidDigest", "s3api", "put-object", "--bucket", b, "--key", "v/md5", "--body", d + "/one", "--content-md5", "bad")
fails("BadDigest", "s3api", "put-object", "--bucket", b, "--key", "v/md5", "--body", d + "/one", "--content-md5", base64.b64encode(b"0123456789abcdef").decode())
aws("s3api", "put-object", "--bucket", b, "--key", "v/gz", "--body", d + "/one", "--content-encoding", "gzip, aws-chunked")
assert aws("s3api", "head-object", "--bucket", b, "--key", "v/gz")["ContentEncoding"] == "gzip"

# Special keys through `s3 cp` (upload, server-side copy, download) and `s3 ls`.
keys = ["sp ace", "plus+sign", "per%cent", "ünï", "what?now", "hash#tag"]
for k in keys:
    aws("s3", "cp", d + "/one", "s3://%s/s/%s" % (b, k))
    aws("s3", "cp", "s3://%s/s/%s" % (b, k), "s3://%s/s2/%s" % (b, k))
    aws("s3", "cp", "s3://%s/s2/%s" % (b, k), d + "/back")
    assert open(d + "/back", "rb").read() == b"one", k
ls = aws("s3", "ls", "s3://%s/s2/" % b)
for k in keys:
    assert k in ls, (k, ls)
ctl = aws("s3api", "list-objects-v2", "--bucket", b, "--prefix", "s/")
assert sorted(o["Key"] for o in ctl["Contents"]) == sorted("s/" + k for k in keys), ctl

# Control characters in keys: the CLI lists URL-encoded and decodes.
for k in ("c/a\x01b", "c/c\rd"):
    aws("s3api", "put-object", "--bucket", b, "--key", k, "--body", d + "/one")
l = aws("s3api", "list-objects-v2", "--bucket", b, "--prefix", "c/")
assert [o["Key"] for o in l["Contents"]] == ["c/a\x01b", "c/c\rd"], l

# Public read without credentials.
r = subprocess.run(["python3", "-m", "awscli", "--endpoint-url", ep, "--no-sign-request", "s3", "cp",
    "s3://%s/s/sp ace" % b, d + "/anon"], capture_output=True, text=True)
assert r.returncode == 0 and open(d + "/anon", "rb").read() == b"one", r.stderr
r = subprocess.run(["python3", "-m", "awscli", "--endpoint-url", ep, "--no-sign-request", "s3", "cp",
    d + "/one", "s3://%s/anon" % b], capture_output=True, text=True)
assert r.returncode != 0 and "AccessDenied" in r.stderr, r.stderr
for f in os.listdir(d):
    os.remove(d + "/" + f)
os.rmdir(d)
print("awscli conformance ok")
"#;

#[test]
fn awscli_s3_conformance() {
    clients_ready();
    let node = conformance_node("s3-awscli-conf");
    let bucket = node.bucket.clone();
    let out = python(AWSCLI_CONFORMANCE, &node, &bucket);
    assert!(out.contains("awscli conformance ok"), "{out}");
}
