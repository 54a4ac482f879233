//! Generates the protobuf messages and ttrpc (sync) client/server code from
//! protos/. ttrpc-codegen parses the files in pure Rust, so no protoc is
//! needed on the build machine.

use std::fmt::Write as _;
use std::path::PathBuf;

use ttrpc_codegen::{Codegen, Customize};

/// The .proto files, by module name: each yields `<name>.rs` (messages) and
/// `<name>_ttrpc.rs` (client and server).
const PROTOS: &[&str] = &["agent", "health"];

fn main() -> std::io::Result<()> {
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let inputs: Vec<String> = PROTOS.iter().map(|p| format!("protos/{p}.proto")).collect();
    for input in &inputs {
        println!("cargo:rerun-if-changed={input}");
    }
    Codegen::new()
        .out_dir(&out_dir)
        .inputs(&inputs)
        .include("protos")
        .rust_protobuf()
        .customize(Customize::default())
        .run()?;

    // The generated files start with inner attributes (#![allow(...)]), which
    // `include!` rejects; declaring them as real modules through #[path] keeps
    // those attributes valid and the modules siblings, as the generated
    // `super::health::...` paths expect.
    let mut modules = String::new();
    for proto in PROTOS {
        for module in [proto.to_string(), format!("{proto}_ttrpc")] {
            let path = out_dir.join(format!("{module}.rs"));
            writeln!(
                modules,
                "#[path = {:?}]\npub mod {module};",
                path.display().to_string()
            )
            .expect("writing to a String cannot fail");
        }
    }
    std::fs::write(out_dir.join("modules.rs"), modules)
}
