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
