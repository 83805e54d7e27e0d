//! A kernel's module index, read as `modprobe` reads it.
//!
//! - [`resolve_modules`] turns `modules.dep` into a dependency-first load
//!   order for named modules (what runvm's initramfs loads at boot).
//! - [`plan_modprobe`] answers the kernel's own request for a module (an
//!   alias such as `fs-overlay` or `net-pf-16-proto-12`, or a module name)
//!   with the files to load, in order, from `modules.alias`,
//!   `modules.softdep` and the built-in lists besides `modules.dep`.
//!
//! Everything here is pure: the callers read the files, with their own
//! bounds, and load the modules.

mod alias;
mod dep;

pub use alias::{plan_modprobe, IndexFiles, MAX_ALIAS_LINES};
pub use dep::{module_name, resolve_modules, MAX_INDEX_LINES, MAX_MODULES};

/// Why a module index cannot give what was asked.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// A requested module is neither in `modules.dep` nor built in.
    #[error(
        "kernel module {0} is neither in modules.dep nor built into the kernel: use a kernel \
         that provides it (Debian's linux-image-cloud-amd64 does), and make sure `depmod` was \
         run for it"
    )]
    ModuleNotFound(String),

    /// The wanted modules and their dependencies are too many.
    #[error(
        "the kernel modules runvm needs depend on more than {limit} modules in modules.dep: \
         refusing the kernel"
    )]
    TooManyModules { limit: usize },

    /// An index lists more entries than any real kernel's.
    #[error("the kernel's {file} lists more than {limit} entries, more than any real kernel: regenerate it with depmod")]
    IndexTooLarge {
        /// `modules.dep` or `modules.alias`.
        file: &'static str,
        limit: usize,
    },
}
