//! `vadapt augment` under stress (issue 9): Ctrl-C (once, and twice), a disk that fills up (a file-size limit), and
//! a failure injected into each pipeline stage. Each must end the run in bounded time with a clear message, leave no
//! file under a final name in the output, and leave a state that `--resume` finishes to the bytes of an
//! uninterrupted run.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use vadapt::pipeline::run::{FailAt, FailPoint};
use vadapt::pipeline::units::WorkDir;
use vadapt::pipeline::{self, PipelineConfig};

use crate::common::{vadapt, vadapt_bin};
use crate::pipeline::{assert_same_dataset, opts, pipeline_toml, small_dataset};

/// Poll `cond` every 20 ms until it holds; panic with `what` after `limit`.
fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Wait for `child` to exit, at most `limit` (then kill it and fail: a hang).
fn wait_exit(child: &mut Child, limit: Duration) -> ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("vadapt did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read_stderr(child: &mut Child) -> String {
    use std::io::Read;
    let mut s = String::new();
    child.stderr.take().unwrap().read_to_string(&mut s).unwrap();
    s
}

/// Finished units in the manifest.
fn finished_units(out: &Path) -> usize {
    WorkDir::new(out).finished().map(|m| m.len()).unwrap_or(0)
}

/// Nothing under a final name: no dataset directory in `out`, and every unit file (not a hidden temporary) is in
/// the manifest with a matching checksum.
fn assert_no_final_files(out: &Path) {
    for name in ["data", "videos", "images", "meta"] {
        assert!(
            !out.join(name).exists(),
            "{}/{name} exists after a failed or interrupted run",
            out.display()
        );
    }
    let work = WorkDir::new(out);
    let done = work.finished().unwrap();
    for rec in done.values() {
        work.load(rec)
            .unwrap_or_else(|e| panic!("unit {} is corrupt: {e}", rec.file));
    }
    let units: Vec<String> = std::fs::read_dir(work.units_dir())
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        units.len(),
        done.len(),
        "unit files not in the manifest: {units:?}"
    );
}

fn augment_args(toml: &Path, data: &Path, out: &Path, resume: bool) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "augment".into(),
        "--pipeline".into(),
        toml.to_str().unwrap().into(),
        "--input".into(),
        data.to_str().unwrap().into(),
        "--output".into(),
        out.to_str().unwrap().into(),
        "--threads".into(),
        "2".into(),
        "--quiet".into(),
    ];
    if resume {
        a.push("--resume".into());
    }
    a
}

fn spawn(args: &[String], file_size_limit: Option<u64>) -> Child {
    let mut cmd = Command::new(vadapt_bin());
    cmd.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
    if let Some(limit) = file_size_limit {
        // SAFETY: only async-signal-safe calls (setrlimit, signal) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // A full disk, without privileges: writes past `limit` bytes fail with EFBIG (SIGXFSZ ignored, so
                // the write returns the error instead of killing the process).
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                let rl = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                if libc::setrlimit(libc::RLIMIT_FSIZE, &rl) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    cmd.spawn().expect("spawn vadapt")
}

fn send(child: &Child, signal: libc::c_int) {
    // SAFETY: kill(2) on our own child's pid.
    let r = unsafe { libc::kill(child.id() as libc::pid_t, signal) };
    assert_eq!(r, 0, "kill -{signal} failed");
}

/// Ctrl-C (once: graceful; twice: immediate) and a full disk (units, then the dataset's metadata), each followed by
/// `--resume`: exit 130 / 2 with a message saying what to do, nothing under a final name, the same bytes at the end.
#[test]
fn pipeline_ctrl_c_and_disk_full_leave_a_state_resume_finishes_byte_identically() {
    let dir = tempfile::tempdir().unwrap();
    let data = small_dataset(dir.path(), 4, 10);
    let toml = pipeline_toml(dir.path(), "paired", "");
    let cfg = PipelineConfig::load(&toml).unwrap();
    let reference = dir.path().join("ref");
    let t0 = Instant::now();
    pipeline::run(&cfg, &toml, &opts(&data, &reference)).unwrap();
    let unit_secs = t0.elapsed().as_secs_f64() / 4.0;
    eprintln!("reference: 4 units, {unit_secs:.1}s per unit");

    // Ctrl-C once (graceful stop) and twice (immediate exit), and SIGTERM once (what Slurm and Kubernetes send
    // before stopping a job), each after the first unit is finished.
    for (signal, signals) in [(libc::SIGINT, 1), (libc::SIGINT, 2), (libc::SIGTERM, 1)] {
        let out = dir.path().join(format!("signal_{signal}_x{signals}"));
        let mut child = spawn(&augment_args(&toml, &data, &out, false), None);
        wait_for("the first unit", Duration::from_secs(300), || {
            finished_units(&out) >= 1 || child.try_wait().unwrap().is_some()
        });
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before Ctrl-C; the test proves nothing"
        );
        let t = Instant::now();
        send(&child, signal);
        if signals == 2 {
            // Two signals sent back to back can merge into one pending signal; the second must arrive after the
            // handler ran, and nothing outside the process can observe that, so wait a moment.
            std::thread::sleep(Duration::from_millis(200));
            send(&child, signal);
        }
        let status = wait_exit(&mut child, Duration::from_secs(60));
        let stop_secs = t.elapsed().as_secs_f64();
        let stderr = read_stderr(&mut child);
        eprintln!(
            "signal {signal} x{signals}: exited {:?} {stop_secs:.2}s after the signal, {} of 4 units kept",
            status.code(),
            finished_units(&out)
        );
        assert_eq!(status.code(), Some(130), "stderr:\n{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        if signals == 1 {
            eprintln!("{}", stderr.trim());
            assert!(
                stderr.contains("interrupted") && stderr.contains("--resume"),
                "the message should say how to resume:\n{stderr}"
            );
        }
        assert_no_final_files(&out);
        let resumed = vadapt(
            &augment_args(&toml, &data, &out, true)
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        );
        assert!(resumed.contains("reused"), "{resumed}");
        assert_same_dataset(&reference, &out);
    }

    // A full disk: at 16 KiB a unit (28,820 bytes) cannot be written; at 48 KiB every unit and video fits but the
    // episodes metadata parquet (about 100 KB) does not.
    for (limit, what) in [(16u64 << 10, ".vadapt/units/"), (48 << 10, "meta/episodes")] {
        let out = dir.path().join(format!("full_{limit}"));
        let mut child = spawn(&augment_args(&toml, &data, &out, false), Some(limit));
        let status = wait_exit(&mut child, Duration::from_secs(300));
        let stderr = read_stderr(&mut child);
        eprintln!("file size limit {limit}: {}", stderr.trim());
        assert_eq!(status.code(), Some(2), "stderr:\n{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(
            stderr.contains("File too large") && stderr.contains(what),
            "the error should name the file being written ({what}) and say why:\n{stderr}"
        );
        assert_eq!(
            stderr.matches("File too large").count(),
            1,
            "the cause once:\n{stderr}"
        );
        assert_no_final_files(&out);
        vadapt(
            &augment_args(&toml, &data, &out, true)
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        );
        assert_same_dataset(&reference, &out);
    }
}

/// A failure injected into each stage in turn (the read, decode and prepare threads, a sampler's edge channel and
/// denoising loop, the writer's encoding and its metadata), at the second of three episodes with two sampler
/// threads: the run returns that stage's error within 60 s (a hang fails the test) and finishes nothing; the next
/// stage's run resumes the same output, and a last clean `--resume` gives the bytes of an uninterrupted run.
#[test]
fn pipeline_a_failure_in_any_stage_ends_the_run_with_that_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = small_dataset(dir.path(), 3, 10);
    let toml = pipeline_toml(dir.path(), "paired", "");
    let cfg = PipelineConfig::load(&toml).unwrap();
    let reference = dir.path().join("ref");
    pipeline::run(&cfg, &toml, &opts(&data, &reference)).unwrap();

    let out = dir.path().join("out");
    // Edges and sample first: they fire only while episode 1's unit is still to be sampled.
    let order = [
        FailAt::Edges,
        FailAt::Sample,
        FailAt::Read,
        FailAt::Decode,
        FailAt::Prepare,
        FailAt::Encode,
        FailAt::Write,
    ];
    assert_eq!(order.len(), FailAt::ALL.len());
    let mut report = Vec::new();
    for (i, at) in order.into_iter().enumerate() {
        let mut o = opts(&data, &out);
        o.threads = 2;
        o.resume = i > 0;
        o.fail = Some(FailPoint { at, position: 1 });
        let (cfg, toml) = (cfg.clone(), toml.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let t0 = Instant::now();
        std::thread::spawn(move || {
            let _ = tx.send(pipeline::run(&cfg, &toml, &o));
        });
        let r = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("{at:?}: the run did not end within 60 s (deadlock?)"));
        let secs = t0.elapsed().as_secs_f64();
        let err = match r {
            Ok(_) => panic!("{at:?}: the run succeeded despite the injected failure"),
            Err(e) => e,
        };
        let msg = err.to_string();
        report.push(format!("{:<8} {secs:5.2}s  {msg}", at.name()));
        assert!(
            !matches!(err, vadapt::Error::Cancelled(_)),
            "{at:?}: the run should return the failing stage's error, not {msg}"
        );
        assert!(
            msg.contains(&format!("stage {}", at.name())) && msg.contains("injected"),
            "{at:?}: {msg}"
        );
        if at != FailAt::Write {
            assert!(msg.contains("episode 1"), "{at:?}: {msg}");
        }
        assert_no_final_files(&out);
    }
    eprintln!("{}", report.join("\n"));
    let mut o = opts(&data, &out);
    o.resume = true;
    pipeline::run(&cfg, &toml, &o).unwrap();
    assert_same_dataset(&reference, &out);
}

/// `vadapt augment` with stderr, stdout and the exit status.
fn augment_cli(args: &[&Path], extra: &[&str]) -> (bool, String, String) {
    let [toml, input, output] = args else {
        panic!("toml, input, output")
    };
    let out = Command::new(vadapt_bin())
        .args(["augment", "--quiet", "--pipeline"])
        .arg(toml)
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(output)
        .args(extra)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "{stderr}");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        stderr,
    )
}

/// The small sample with the camera's `to_timestamp` of the episodes in `bad` two frames short: a span that
/// disagrees with the episode's rows, which the reader refuses for that episode (issue 24).
fn dataset_with_short_spans(dir: &Path, bad: &[usize]) -> std::path::PathBuf {
    use crate::bad_inputs::{edit_column, map_numbers};
    let data = crate::pipeline::small_dataset(dir, 3, 9);
    let table = data.join("meta/episodes/chunk-000/file-000.parquet");
    let key = format!("videos/{}/to_timestamp", crate::pipeline::KEY);
    edit_column(&table, &key, |c| {
        Some(map_numbers(
            c,
            |i, x| if bad.contains(&i) { x - 0.2 } else { x },
        ))
    });
    data
}

/// Issue 24: every skip reason reaches the user. One bad episode: exit 0, a warning naming the episode, the field
/// and both values on stderr at the end, the reason in meta/augmentation.json; `--strict` makes it the error.
/// Every episode bad: the error repeats the reasons, not only "no episodes were saved".
#[test]
fn augment_tells_every_skip_reason() {
    let dir = tempfile::tempdir().unwrap();
    let one = dataset_with_short_spans(&dir.path().join("one"), &[1]);
    let toml = pipeline_toml(dir.path(), "paired", "");
    let field = format!("videos/{}/to_timestamp", crate::pipeline::KEY);

    let out = dir.path().join("out1");
    let (ok, _, stderr) = augment_cli(&[&toml, &one, &out], &[]);
    assert!(ok, "{stderr}");
    let summary = stderr
        .split("warning: 1 episode(s) skipped")
        .nth(1)
        .unwrap_or_else(|| panic!("no skip summary on stderr:\n{stderr}"));
    for want in ["episode 1", field.as_str(), "length 9 rows", "0.7000s"] {
        assert!(summary.contains(want), "summary lacks {want:?}:\n{stderr}");
    }
    let prov: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("meta/augmentation.json")).unwrap())
            .unwrap();
    assert_eq!(prov["skipped"][0]["episode"], 1);
    let reason = prov["skipped"][0]["reason"].as_str().unwrap();
    assert!(
        reason.contains(&field) && reason.contains("length 9 rows"),
        "{reason}"
    );

    let (ok, _, stderr) = augment_cli(&[&toml, &one, &dir.path().join("strict")], &["--strict"]);
    assert!(!ok, "--strict should fail on the bad episode");
    assert!(
        stderr.contains("episode 1") && stderr.contains(&field),
        "{stderr}"
    );

    let all = dataset_with_short_spans(&dir.path().join("all"), &[0, 1, 2]);
    let out = dir.path().join("out_all");
    let (ok, _, stderr) = augment_cli(&[&toml, &all, &out], &[]);
    assert!(!ok, "a run that saved nothing must fail");
    assert!(
        stderr.contains("no episodes were saved: all 3 selected episodes were skipped"),
        "{stderr}"
    );
    for ep in 0..3 {
        assert!(stderr.contains(&format!("episode {ep}")), "{stderr}");
    }
    assert!(
        stderr.contains(&field) && stderr.contains("length 9 rows"),
        "{stderr}"
    );
    assert!(!out.join("meta/info.json").exists());
}

/// Issue 24: the plan-time memory estimate. `--dry-run` prints it per target and for the run; a run whose estimate
/// exceeds `--max-memory` is refused before anything is written, naming the estimate and the key that drives it.
#[test]
fn augment_estimates_memory_and_refuses_a_run_that_does_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    let data = crate::pipeline::small_dataset(dir.path(), 2, 9);
    let toml = pipeline_toml(dir.path(), "paired", "");
    let out = dir.path().join("out");
    let (ok, stdout, stderr) = augment_cli(&[&toml, &data, &out], &["--dry-run"]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("memory: target edge_sim") && stdout.contains("memory: run about"),
        "{stdout}"
    );
    let (ok, _, stderr) = augment_cli(&[&toml, &data, &out], &["--max-memory", "20M"]);
    assert!(!ok, "a 20 MiB limit cannot hold the process");
    assert!(
        stderr.contains("the run needs about") && stderr.contains("--max-memory is 20 MiB"),
        "{stderr}"
    );
    assert!(!out.exists(), "a refused run wrote {}", out.display());
    let (ok, _, stderr) = augment_cli(&[&toml, &data, &out], &["--max-memory", "lots"]);
    assert!(!ok && stderr.contains("8G"), "{stderr}");
}
