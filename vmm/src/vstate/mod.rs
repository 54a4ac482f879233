//! KVM state: the VM (memory slots, in-kernel interrupt controllers, irqfds
//! and ioeventfds) and its vCPUs.

pub mod vcpu;
pub mod vm;
