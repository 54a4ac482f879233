//! A container of the OCI command line, whichever isolation runs it: the
//! commands after `create` load it here and never ask which.

use std::path::Path;

use anyhow::Result;
use kata_rs_engine::{ContainerStatus, Engine, LinuxResources, OciState};
use nix::sys::signal::Signal;
use serde_json::Value;

use super::cli::ExecArgs;
use super::{namespace, vm};

pub trait OciContainer {
    fn state(&self) -> Result<OciState>;

    fn status(&self) -> ContainerStatus;

    fn start(&mut self) -> Result<()>;

    fn kill(&mut self, signal: Signal, all: bool) -> Result<()>;

    fn pause(&mut self) -> Result<()>;

    fn resume(&mut self) -> Result<()>;

    fn delete(self: Box<Self>, force: bool) -> Result<()>;

    /// Runs the process `args` describe in the container; its exit code
    /// (0 when detached).
    fn exec(self: Box<Self>, root: &Path, args: &ExecArgs) -> Result<i32>;

    fn pids(&self) -> Result<Vec<i32>>;

    /// `ps`'s table of the processes `pids`.
    fn ps_table(&self, pids: &[i32], ps_args: &[String]) -> Result<String>;

    fn update(&self, resources: &LinuxResources) -> Result<()>;

    /// Statistics in runc's `events --stats` form.
    fn stats(&self) -> Result<Value>;
}

/// Container `id` under `root`, under its lock.
pub fn load(root: &Path, id: &str) -> Result<Box<dyn OciContainer>> {
    if vm::state::is_vm(root, id) {
        return Ok(Box::new(vm::Vm::load(root, id)?));
    }
    Ok(Box::new(Engine::new(root, false)?.load(id)?))
}

/// The ids of every container under `root`.
pub fn ids(root: &Path) -> Result<Vec<String>> {
    let mut ids = Engine::new(root, false)?.ids()?;
    ids.extend(vm::ids(root));
    ids.sort();
    Ok(ids)
}

impl OciContainer for kata_rs_engine::Container {
    fn state(&self) -> Result<OciState> {
        Ok(kata_rs_engine::Container::state(self)?)
    }

    fn status(&self) -> ContainerStatus {
        kata_rs_engine::Container::status(self)
    }

    fn start(&mut self) -> Result<()> {
        Ok(kata_rs_engine::Container::start(self)?)
    }

    fn kill(&mut self, signal: Signal, all: bool) -> Result<()> {
        Ok(kata_rs_engine::Container::kill(self, signal, all)?)
    }

    fn pause(&mut self) -> Result<()> {
        Ok(kata_rs_engine::Container::pause(self)?)
    }

    fn resume(&mut self) -> Result<()> {
        Ok(kata_rs_engine::Container::resume(self)?)
    }

    fn delete(self: Box<Self>, force: bool) -> Result<()> {
        Ok(kata_rs_engine::Container::delete(*self, force)?)
    }

    fn exec(self: Box<Self>, _root: &Path, args: &ExecArgs) -> Result<i32> {
        kata_rs_engine::sealed::run_sealed()?;
        namespace::exec(*self, args)
    }

    fn pids(&self) -> Result<Vec<i32>> {
        Ok(kata_rs_engine::Container::pids(self)?)
    }

    fn ps_table(&self, pids: &[i32], ps_args: &[String]) -> Result<String> {
        namespace::ps_table(pids, ps_args)
    }

    fn update(&self, resources: &LinuxResources) -> Result<()> {
        Ok(kata_rs_engine::Container::update(self, resources)?)
    }

    fn stats(&self) -> Result<Value> {
        Ok(kata_rs_engine::Container::stats(self)?)
    }
}

impl OciContainer for vm::Vm {
    fn state(&self) -> Result<OciState> {
        Ok(self.oci_state())
    }

    fn status(&self) -> ContainerStatus {
        vm::Vm::status(self)
    }

    fn start(&mut self) -> Result<()> {
        vm::Vm::start(self)
    }

    fn kill(&mut self, signal: Signal, all: bool) -> Result<()> {
        vm::Vm::kill(self, signal as i32, all)
    }

    fn pause(&mut self) -> Result<()> {
        vm::Vm::pause(self)
    }

    fn resume(&mut self) -> Result<()> {
        vm::Vm::resume(self)
    }

    fn delete(self: Box<Self>, force: bool) -> Result<()> {
        vm::Vm::delete(*self, force)
    }

    fn exec(self: Box<Self>, root: &Path, args: &ExecArgs) -> Result<i32> {
        let spec = kata_rs_engine::load_bundle_spec(&args.id, &self.state.bundle)?;
        vm::exec(*self, root, args, namespace::exec_process(&spec, args)?)
    }

    fn pids(&self) -> Result<Vec<i32>> {
        vm::Vm::pids(self)
    }

    /// Pids in the guest mean nothing to the host's ps(1): the list alone.
    fn ps_table(&self, pids: &[i32], _ps_args: &[String]) -> Result<String> {
        let mut table = "PID (in the VM)\n".to_owned();
        for p in pids {
            table.push_str(&format!("{p}\n"));
        }
        Ok(table)
    }

    fn update(&self, resources: &LinuxResources) -> Result<()> {
        vm::Vm::update(self, resources)
    }

    fn stats(&self) -> Result<Value> {
        vm::Vm::stats(self)
    }
}
