//! Turns `RUNVM_E2E=1` into `cfg(e2e)`: without it the end-to-end tests
//! are built as ignored (see runvm-e2e-macros).

fn main() {
    println!("cargo::rustc-check-cfg=cfg(e2e)");
    println!("cargo::rerun-if-env-changed=RUNVM_E2E");
    if std::env::var("RUNVM_E2E").as_deref() == Ok("1") {
        println!("cargo::rustc-cfg=e2e");
    }
}
