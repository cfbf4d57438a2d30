//! The `vadapt` command line: argument parsing, logging and progress only; the work lives in the library.

mod cli;

use std::process::ExitCode;

use clap::Parser;

/// Keep freed memory in the process. A UNet forward allocates and frees hundreds of MB of activations; glibc's
/// default serves large blocks with fresh `mmap`s and unmaps them on free, so every step page-faults (and zeroes)
/// them again: 15-30% of training time went to the kernel's page clearing. Serving everything from the heap and
/// never trimming it makes the second step reuse the first step's pages. One arena for every thread: a training
/// step runs on whichever rayon worker picks it up (`train::step::step_on_batch`), and with glibc's per-thread
/// arenas each worker kept its own step's worth of freed activations (a demo prior bench's peak RSS went from
/// 1.0 to 1.9 GB in one run of five); our threads allocate per op, not per element, so they rarely wait for the
/// shared arena's lock.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tunables; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

fn main() -> ExitCode {
    keep_freed_memory();
    // SVT-AV1 prints a banner at info level on every encoder start; errors only unless the user says otherwise.
    if std::env::var_os("SVT_LOG").is_none() {
        std::env::set_var("SVT_LOG", "1");
    }
    // candle's elementwise thread pool spins 25k iterations after every op before parking; on a laptop's few cores
    // those spinning threads take time from the rayon threads doing the next op (10% of a UNet forward on 2 cores).
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "100");
    }
    let args = cli::Cli::parse();
    cli::init_logging(args.verbose);
    vadapt::models::kernels::set_matmul_precision(args.matmul_precision);
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // A closed pipe (`vadapt inspect DS | head`) is not a failure.
            if let Some(io) = err.downcast_ref::<std::io::Error>() {
                if io.kind() == std::io::ErrorKind::BrokenPipe {
                    return ExitCode::SUCCESS;
                }
            }
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}
