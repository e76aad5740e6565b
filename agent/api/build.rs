//! Generates the protobuf messages and async ttrpc stubs from proto/agent.proto.
fn main() {
    println!("cargo:rerun-if-changed=proto/agent.proto");
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    ttrpc_codegen::Codegen::new()
        .out_dir(&out)
        .inputs(["proto/agent.proto"])
        .include("proto")
        .rust_protobuf()
        .customize(ttrpc_codegen::Customize {
            async_all: true,
            ..Default::default()
        })
        .rust_protobuf_customize(ttrpc_codegen::ProtobufCustomize::default().gen_mod_rs(false))
        .run()
        .expect("generating the agent API from proto/agent.proto");
    // The generated files start with inner attributes (`#![...]`), which
    // `include!` does not accept inside a module: drop them; lib.rs sets the
    // allows on the modules instead.
    for name in ["agent.rs", "agent_ttrpc.rs"] {
        let path = std::path::Path::new(&out).join(name);
        let text = std::fs::read_to_string(&path).expect("reading generated code");
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with("#![") && !l.starts_with("//!"))
            .collect();
        std::fs::write(&path, kept.join("\n")).expect("writing generated code");
    }
}
