//! `#[e2e_test]`: marks an end-to-end test of runvm.
//!
//! An end-to-end test needs root, a Docker daemon with the runvm runtime,
//! QEMU and the guest kernel. Without `RUNVM_E2E=1` at build time (the
//! e2e crate's build script turns it into `cfg(e2e)`) the test is compiled
//! as `#[ignore]`d with a reason, so `cargo test` reports it as ignored
//! rather than as passed. With it, the test first checks the prerequisites
//! and fails, naming the missing one, instead of skipping.

use proc_macro::TokenStream;
use quote::quote;
use syn::{parse_macro_input, ItemFn};

/// See the crate documentation.
#[proc_macro_attribute]
pub fn e2e_test(args: TokenStream, item: TokenStream) -> TokenStream {
    parse_macro_input!(args as syn::parse::Nothing);
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = parse_macro_input!(item as ItemFn);
    let stmts = &block.stmts;
    quote! {
        #[test]
        #[cfg_attr(
            not(e2e),
            ignore = "end-to-end: needs root, dockerd with runvm, QEMU; `make test` runs it"
        )]
        #(#attrs)*
        #vis #sig {
            ::runvm_e2e::require_prerequisites();
            #(#stmts)*
        }
    }
    .into()
}
