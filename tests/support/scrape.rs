//! Scraping a service's `/metrics` endpoint the way Prometheus does, and
//! reading the samples back. When `PROMTOOL` names a `promtool` binary, every
//! scrape is also checked with `promtool check metrics`; under CI (`CI` set)
//! it must be set, so the check cannot be skipped silently. Included with
//! `#[path]` by the test binaries that check metrics.

use std::{collections::HashMap, io::Write, net::SocketAddr, process::Stdio};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One scrape: every sample by its series (`name{labels}`), and the text.
#[derive(Debug)]
pub(crate) struct Scrape {
    pub(crate) text: String,
    samples: HashMap<String, f64>,
}

impl Scrape {
    /// The value of `series` (exactly as exposed: `name{label="v",…}`), or 0
    /// when it is absent (a labelled counter appears on its first increment).
    pub(crate) fn value(&self, series: &str) -> f64 {
        self.samples.get(series).copied().unwrap_or(0.0)
    }

    /// The value of `series`, which must be present.
    pub(crate) fn present(&self, series: &str) -> f64 {
        *self
            .samples
            .get(series)
            .unwrap_or_else(|| panic!("{series} is not exposed:\n{}", self.text))
    }

    /// How much `series` grew since `earlier`.
    pub(crate) fn delta(&self, earlier: &Scrape, series: &str) -> f64 {
        self.value(series) - earlier.value(series)
    }
}

/// `GET /metrics` from `address`: checks the status and content type, parses
/// the samples, and runs `promtool check metrics` on the text when available.
pub(crate) async fn scrape(address: SocketAddr) -> Scrape {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, text) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
        "{head}"
    );
    promtool_check(text);
    let samples = text
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("a sample line");
            let value = match value {
                "+Inf" => f64::INFINITY,
                value => value
                    .parse()
                    .unwrap_or_else(|_| panic!("bad sample: {line}")),
            };
            (series.to_owned(), value)
        })
        .collect();
    Scrape {
        text: text.to_owned(),
        samples,
    }
}

/// Runs `$PROMTOOL check metrics` on `text` and fails on any problem it
/// reports. Without `PROMTOOL` it does nothing, except under CI, where it fails.
fn promtool_check(text: &str) {
    let Some(promtool) = std::env::var_os("PROMTOOL") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must set PROMTOOL so that every scrape is checked by promtool"
        );
        return;
    };
    let mut child = std::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run PROMTOOL={promtool:?}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics failed ({}):\n{}{}\n--- exposition ---\n{text}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}
