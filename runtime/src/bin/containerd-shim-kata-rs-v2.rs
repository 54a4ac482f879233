//! `containerd-shim-kata-rs-v2`: the shim containerd starts for runtime
//! type `io.containerd.kata-rs.v2` (see kata_rs::shim).

fn main() {
    kata_rs::shim::init_logging();
    containerd_shim::run::<kata_rs::shim::Shim>(
        kata_rs::shim::RUNTIME_ID,
        Some(kata_rs::shim::shim_config()),
    );
}
