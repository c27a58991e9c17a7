//! `ls`: buckets and keys through the node's S3-compatible API (SigV4 by aws-sdk-s3).

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};

use crate::conn::{url_of_listen, Common, Conn};
use crate::error::CliError;
use crate::util::{bytes, print_json, table};

#[derive(Debug, clap::Args)]
pub struct LsArgs {
    #[command(flatten)]
    pub c: Common,
    /// `BUCKET`, `BUCKET/PREFIX` or `s3://BUCKET/PREFIX`; none lists the buckets.
    pub path: Option<String>,
    /// List every key under the prefix (no grouping by `/`).
    #[arg(short, long)]
    pub recursive: bool,
    /// The node's S3-compatible API [default: the config file's s3api.listen, else
    /// http://127.0.0.1:9000]
    #[arg(long, env = "NEARCACHE_S3API_URL")]
    pub s3_url: Option<String>,
    /// Access key of the S3 API [default: AWS_ACCESS_KEY_ID, else the config file's first
    /// s3api.keys entry]
    #[arg(long, env = "NEARCACHE_S3API_ACCESS_KEY")]
    pub access_key: Option<String>,
    /// Secret key of the S3 API [default: AWS_SECRET_ACCESS_KEY, else the config file's]
    #[arg(long, env = "NEARCACHE_S3API_SECRET_KEY", hide_env_values = true)]
    pub secret_key: Option<String>,
}

pub fn ls(a: LsArgs) -> Result<(), CliError> {
    let conn = Conn::new(&a.c)?;
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let endpoint = a
        .s3_url
        .clone()
        .or_else(|| conn.node_cfg.s3_listen.as_deref().map(url_of_listen))
        .unwrap_or_else(|| "http://127.0.0.1:9000".into());
    let cfg_key = conn.node_cfg.s3_key.clone();
    let access = a
        .access_key
        .clone()
        .or_else(|| env("AWS_ACCESS_KEY_ID"))
        .or_else(|| cfg_key.as_ref().map(|k| k.0.clone()));
    let secret = a
        .secret_key
        .clone()
        .or_else(|| env("AWS_SECRET_ACCESS_KEY"))
        .or_else(|| cfg_key.as_ref().map(|k| k.1.clone()));
    let (Some(access), Some(secret)) = (access, secret) else {
        return Err(CliError::Usage(
            "ls needs an access key of the node's S3 API: --access-key and --secret-key, \
             AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or --config with [[s3api.keys]]"
                .into(),
        ));
    };
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(&endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(
            access,
            secret,
            None,
            None,
            "nearcache-cli",
        ))
        .force_path_style(true)
        .build();
    let client = aws_sdk_s3::Client::from_conf(conf);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::other("starting the S3 client's runtime", e))?;
    let target = a
        .path
        .as_deref()
        .map(|p| p.strip_prefix("s3://").unwrap_or(p))
        .filter(|p| !p.is_empty());
    let classify =
        |what: &str, e: &dyn std::fmt::Display, status: Option<u16>, code: Option<&str>| {
            match status {
                None => CliError::Unreachable {
                    url: endpoint.clone(),
                    detail: e.to_string(),
                },
                Some(status) => CliError::Status {
                    what: what.to_string(),
                    status,
                    error: code.unwrap_or("error").to_string(),
                    detail: String::new(),
                },
            }
        };
    let Some(target) = target else {
        let out = rt.block_on(client.list_buckets().send()).map_err(|e| {
            let status = e.raw_response().map(|r| r.status().as_u16());
            let code = aws_sdk_s3::error::ProvideErrorMetadata::code(&e).map(str::to_string);
            classify(
                "ls",
                &aws_sdk_s3::error::DisplayErrorContext(&e),
                status,
                code.as_deref(),
            )
        })?;
        let names: Vec<String> = out
            .buckets()
            .iter()
            .filter_map(|b| b.name().map(str::to_string))
            .collect();
        if conn.json {
            print_json(&serde_json::json!({ "buckets": names }));
        } else {
            for n in names {
                println!("{n}");
            }
        }
        return Ok(());
    };
    let (bucket, prefix) = target.split_once('/').unwrap_or((target, ""));
    let mut objects = Vec::new();
    let mut prefixes = Vec::new();
    let mut token = None;
    loop {
        let mut req = client.list_objects_v2().bucket(bucket).prefix(prefix);
        if !a.recursive {
            req = req.delimiter("/");
        }
        if let Some(t) = token.take() {
            req = req.continuation_token(t);
        }
        let out = rt.block_on(req.send()).map_err(|e| {
            let status = e.raw_response().map(|r| r.status().as_u16());
            let code = aws_sdk_s3::error::ProvideErrorMetadata::code(&e).map(str::to_string);
            classify(
                &format!("ls {target}"),
                &aws_sdk_s3::error::DisplayErrorContext(&e),
                status,
                code.as_deref(),
            )
        })?;
        for o in out.contents() {
            objects.push(serde_json::json!({
                "key": o.key(),
                "size": o.size().unwrap_or(0),
                "etag": o.e_tag().map(|e| e.trim_matches('"')),
                "last_modified": o.last_modified().map(|t| t.to_string()),
            }));
        }
        for p in out.common_prefixes() {
            if let Some(p) = p.prefix() {
                prefixes.push(p.to_string());
            }
        }
        match out.next_continuation_token() {
            Some(t) if out.is_truncated() == Some(true) => token = Some(t.to_string()),
            _ => break,
        }
    }
    if conn.json {
        print_json(&serde_json::json!({
            "bucket": bucket, "prefix": prefix, "objects": objects, "prefixes": prefixes,
        }));
        return Ok(());
    }
    let mut rows: Vec<Vec<String>> = prefixes
        .iter()
        .map(|p| vec![String::new(), "PRE".into(), p.clone()])
        .collect();
    for o in &objects {
        rows.push(vec![
            o["last_modified"].as_str().unwrap_or("").to_string(),
            bytes(o["size"].as_u64().unwrap_or(0)),
            o["key"].as_str().unwrap_or("").to_string(),
        ]);
    }
    if !rows.is_empty() {
        println!("{}", table(&["MODIFIED", "SIZE", "KEY"], &rows));
    }
    Ok(())
}
