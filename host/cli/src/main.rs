use std::process::ExitCode;

// glibc's malloc spent a tenth of the profile-read path in arena bookkeeping across the
// runtime's threads; mimalloc's per-thread heaps do not.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    rekindle::main()
}
