//! Every shell block in the docs is run here, or names the test that covers it (issue #19).
//!
//! Convention (docs/architecture.md, "Commands in the docs"): a fenced block whose
//! language is `sh`, `bash`, `shell` or `console` must say in its info string either
//! `run` (this test runs it, with bash `-euo pipefail`, from the repository root, with the
//! `ecluse` just built first on PATH and the demo's fixed addresses `127.0.0.1:8080` /
//! `127.0.0.1:9090` replaced by a demo this test starts on free ports), or `skip=FILE`
//! (not runnable here: needs root, a package, systemd, or runs forever; FILE is the test
//! that covers it, and must exist).

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const DOCS: &[&str] = &["README.md", "docs/operations.md", "docs/scale.md"];

struct Block {
    file: &'static str,
    line: usize,
    info: String,
    text: String,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn blocks() -> Vec<Block> {
    let mut out = Vec::new();
    for file in DOCS {
        let text = std::fs::read_to_string(root().join(file)).expect("read doc");
        let mut open: Option<(usize, String, String)> = None;
        for (i, line) in text.lines().enumerate() {
            let t = line.trim_start();
            if let Some(rest) = t.strip_prefix("```") {
                match open.take() {
                    Some((line, info, body)) => out.push(Block {
                        file,
                        line,
                        info,
                        text: body,
                    }),
                    None => open = Some((i + 1, rest.trim().to_string(), String::new())),
                }
            } else if let Some((_, _, body)) = &mut open {
                body.push_str(t);
                body.push('\n');
            }
        }
        assert!(open.is_none(), "{file}: a fence is not closed");
    }
    out
}

fn is_shell(info: &str) -> bool {
    matches!(
        info.split_whitespace().next(),
        Some("sh" | "bash" | "shell" | "console")
    )
}

/// Start `ecluse demo` on free ports; (child, ent address, admin address).
fn demo(dir: &Path) -> (std::process::Child, String, String) {
    let mut child = Command::new(bin())
        .args(["demo", "--port", "0", "--admin-port", "0"])
        .current_dir(dir)
        .env("TMPDIR", dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn demo");
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut ent, mut admin) = (None, None);
    while ent.is_none() || admin.is_none() {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("demo printed its URLs");
        let Some(url) = line.split_whitespace().next() else {
            continue;
        };
        let Some(addr) = url.strip_prefix("http://") else {
            continue;
        };
        let addr = addr.split('/').next().unwrap_or("").to_string();
        if url.ends_with("/metrics") {
            admin = Some(addr);
        } else if ent.is_none() {
            ent = Some(addr);
        }
    }
    (child, ent.unwrap(), admin.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shell_block_in_the_docs_is_run_or_covered_by_a_named_test() {
    let all: Vec<Block> = blocks().into_iter().filter(|b| is_shell(&b.info)).collect();
    assert!(!all.is_empty(), "no shell blocks found");
    let mut problems = Vec::new();
    let mut to_run = Vec::new();
    for b in &all {
        let words: Vec<&str> = b.info.split_whitespace().skip(1).collect();
        let skip = words.iter().find_map(|w| w.strip_prefix("skip="));
        match (words.contains(&"run"), skip) {
            (true, None) => to_run.push(b),
            (false, Some(test)) => {
                if !root().join(test).exists() {
                    problems.push(format!("{}:{}: skip={test}: no such file", b.file, b.line));
                } else {
                    eprintln!(
                        "skipped {}:{} (covered by {test}): {}",
                        b.file,
                        b.line,
                        b.text.lines().next().unwrap_or("")
                    );
                }
            }
            _ => problems.push(format!(
                "{}:{}: a shell block must say `run` or `skip=TEST` after its language (```{})",
                b.file, b.line, b.info
            )),
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(!to_run.is_empty(), "nothing runnable in the docs");

    let scratch = TempDir::new("doc-commands");
    let (mut child, ent, admin) = demo(scratch.path());
    let c = client();
    let ready = format!("http://{admin}/readyz");
    eventually(
        "demo ready",
        Duration::from_secs(30),
        async || matches!(c.get(&ready).send().await, Ok(r) if r.status() == 200),
    )
    .await;
    let bin_dir = Path::new(bin()).parent().expect("bin dir").to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut failures = Vec::new();
    for b in &to_run {
        let script = b
            .text
            .replace("127.0.0.1:8080", &ent)
            .replace("127.0.0.1:9090", &admin);
        let out = Command::new("bash")
            .args(["-euo", "pipefail", "-c", &script])
            .current_dir(root())
            .env("PATH", &path)
            .output()
            .expect("run bash");
        eprintln!("ran {}:{}: {}", b.file, b.line, out.status);
        if !out.status.success() {
            failures.push(format!(
                "{}:{}: {}\n{script}\nstdout: {}\nstderr: {}",
                b.file,
                b.line,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The capacity model of docs/scale.md (issue #24): its tables are what
/// `bench/scale_model.py` computes, and every figure the script starts from is one
/// docs/benchmarks.md shows. A changed measure or a hand-edited table fails here.
#[test]
fn the_capacity_model_in_docs_scale_md_is_recomputed_from_the_benchmarks() {
    let out = Command::new("python3")
        .args(["bench/scale_model.py", "--check", "docs/scale.md"])
        .current_dir(root())
        .output()
        .expect("python3 (Debian's python3)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The model answers for other inputs too, and names what saturates first.
    let out = Command::new("python3")
        .args([
            "bench/scale_model.py",
            "--poll-interval",
            "20",
            "--file-mb",
            "0.5",
        ])
        .current_dir(root())
        .output()
        .expect("python3");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("Saturates first"),
        "{text}"
    );
}
