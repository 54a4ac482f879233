//! What an exec'd process takes from its container.
//!
//! libcontainer's exec runs the given process as it is and rebuilds the
//! container's `linux` section with namespaces and cgroup only, so on its
//! own an exec would run without the container's seccomp filter, and
//! without its capabilities, rlimits and LSM label when the caller's process
//! leaves them out. runc gives an exec all of those; this module does the
//! same before libcontainer sees the process. (libcontainer applies an
//! AppArmor profile but no SELinux label, to the init or an exec alike.)

use oci_spec::runtime::{Capability, LinuxSeccomp, Process, Spec};

/// The container's seccomp filter, as the exec's program must get it.
#[derive(Debug, Clone)]
pub(crate) struct ExecFilter {
    pub filter: LinuxSeccomp,
    /// CAP_SYS_ADMIN was added to the exec's permitted set only so that the
    /// filter can be loaded without no_new_privileges; the program must not
    /// keep it.
    pub lent_sys_admin: bool,
}

/// Fills in what `process` leaves out from the container's own process:
/// capabilities, no_new_privileges, rlimits, AppArmor profile and SELinux
/// label, as runc does for an exec.
pub(crate) fn inherit(process: &mut Process, container: &Spec) {
    let Some(init) = container.process() else {
        return;
    };
    if process.capabilities().is_none() {
        process.set_capabilities(init.capabilities().clone());
    }
    if process.no_new_privileges().is_none() {
        process.set_no_new_privileges(init.no_new_privileges());
    }
    if process.rlimits().as_ref().is_none_or(Vec::is_empty) {
        process.set_rlimits(init.rlimits().clone());
    }
    if process
        .apparmor_profile()
        .as_ref()
        .is_none_or(String::is_empty)
    {
        process.set_apparmor_profile(init.apparmor_profile().clone());
    }
    if process
        .selinux_label()
        .as_ref()
        .is_none_or(String::is_empty)
    {
        process.set_selinux_label(init.selinux_label().clone());
    }
}

/// The container's seccomp filter for an exec of `process`, if it has one.
///
/// Without no_new_privileges the kernel loads a filter only for a task with
/// CAP_SYS_ADMIN, and by the time the program is about to run libcontainer
/// has dropped the capabilities to the process's own. So where the process
/// lacks it, CAP_SYS_ADMIN is kept in its permitted set (not its bounding,
/// inheritable or ambient sets) to be raised for the load and dropped right
/// after, before exec.
pub(crate) fn seccomp_for(
    process: &mut Process,
    container: &Spec,
) -> Result<Option<ExecFilter>, String> {
    let Some(filter) = container.linux().as_ref().and_then(|l| l.seccomp().clone()) else {
        return Ok(None);
    };
    if libcontainer::seccomp::is_notify(&filter) {
        return Err(
            "its seccomp profile sends system calls to a notify listener, which an exec \
             cannot join yet"
                .to_owned(),
        );
    }
    let lent_sys_admin = process.no_new_privileges() != Some(true) && lend_sys_admin(process);
    Ok(Some(ExecFilter {
        filter,
        lent_sys_admin,
    }))
}

/// Adds CAP_SYS_ADMIN to the permitted set where the process names a
/// permitted set without it; true if it did.
fn lend_sys_admin(process: &mut Process) -> bool {
    let Some(mut caps) = process.capabilities().clone() else {
        return false;
    };
    let Some(mut permitted) = caps.permitted().clone() else {
        return false;
    };
    if !permitted.insert(Capability::SysAdmin) {
        return false;
    }
    caps.set_permitted(Some(permitted));
    process.set_capabilities(Some(caps));
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{
        LinuxBuilder, LinuxCapabilitiesBuilder, LinuxSeccompAction, LinuxSeccompBuilder,
        LinuxSyscallBuilder, PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, SpecBuilder,
    };
    use std::collections::HashSet;

    fn caps(names: &[Capability]) -> oci_spec::runtime::LinuxCapabilities {
        let set: HashSet<Capability> = names.iter().copied().collect();
        LinuxCapabilitiesBuilder::default()
            .bounding(set.clone())
            .effective(set.clone())
            .permitted(set)
            .build()
            .unwrap()
    }

    fn container(action: LinuxSeccompAction) -> Spec {
        let init = ProcessBuilder::default()
            .capabilities(caps(&[Capability::Chown, Capability::Kill]))
            .no_new_privileges(false)
            .rlimits(vec![PosixRlimitBuilder::default()
                .typ(PosixRlimitType::RlimitNofile)
                .hard(64u64)
                .soft(64u64)
                .build()
                .unwrap()])
            .apparmor_profile("runtime-default")
            .build()
            .unwrap();
        let seccomp = LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActAllow)
            .syscalls(vec![LinuxSyscallBuilder::default()
                .names(vec!["mkdir".to_owned()])
                .action(action)
                .build()
                .unwrap()])
            .build()
            .unwrap();
        SpecBuilder::default()
            .process(init)
            .linux(LinuxBuilder::default().seccomp(seccomp).build().unwrap())
            .build()
            .unwrap()
    }

    fn bare_process() -> Process {
        let mut p = ProcessBuilder::default()
            .args(vec!["sh".to_owned()])
            .build()
            .unwrap();
        p.set_capabilities(None)
            .set_no_new_privileges(None)
            .set_rlimits(None)
            .set_apparmor_profile(None);
        p
    }

    #[test]
    fn a_bare_exec_takes_the_containers_settings() {
        let spec = container(LinuxSeccompAction::ScmpActErrno);
        let mut p = bare_process();
        inherit(&mut p, &spec);
        let init = spec.process().as_ref().unwrap();
        assert_eq!(p.capabilities(), init.capabilities());
        assert_eq!(p.no_new_privileges(), Some(false));
        assert_eq!(p.rlimits(), init.rlimits());
        assert_eq!(p.apparmor_profile().as_deref(), Some("runtime-default"));
    }

    #[test]
    fn an_exec_keeps_what_it_names() {
        let spec = container(LinuxSeccompAction::ScmpActErrno);
        let mut p = bare_process();
        p.set_capabilities(Some(caps(&[Capability::NetRaw])))
            .set_no_new_privileges(Some(true))
            .set_apparmor_profile(Some("unconfined".to_owned()));
        inherit(&mut p, &spec);
        assert_eq!(p.capabilities(), &Some(caps(&[Capability::NetRaw])));
        assert_eq!(p.no_new_privileges(), Some(true));
        assert_eq!(p.apparmor_profile().as_deref(), Some("unconfined"));
    }

    #[test]
    fn the_filter_lends_sys_admin_only_when_the_kernel_needs_it() {
        let spec = container(LinuxSeccompAction::ScmpActErrno);
        let mut p = bare_process();
        inherit(&mut p, &spec);
        let f = seccomp_for(&mut p, &spec).unwrap().unwrap();
        assert!(f.lent_sys_admin);
        let c = p.capabilities().as_ref().unwrap();
        assert!(c
            .permitted()
            .as_ref()
            .unwrap()
            .contains(&Capability::SysAdmin));
        assert!(!c
            .bounding()
            .as_ref()
            .unwrap()
            .contains(&Capability::SysAdmin));
        assert!(!c
            .effective()
            .as_ref()
            .unwrap()
            .contains(&Capability::SysAdmin));

        let mut nnp = bare_process();
        inherit(&mut nnp, &spec);
        nnp.set_no_new_privileges(Some(true));
        assert!(
            !seccomp_for(&mut nnp, &spec)
                .unwrap()
                .unwrap()
                .lent_sys_admin
        );

        let mut admin = bare_process();
        admin.set_capabilities(Some(caps(&[Capability::SysAdmin])));
        assert!(
            !seccomp_for(&mut admin, &spec)
                .unwrap()
                .unwrap()
                .lent_sys_admin
        );
    }

    #[test]
    fn no_filter_without_a_profile_and_a_notify_profile_is_refused() {
        let mut plain = container(LinuxSeccompAction::ScmpActErrno);
        plain.set_linux(Some(LinuxBuilder::default().build().unwrap()));
        assert!(seccomp_for(&mut bare_process(), &plain).unwrap().is_none());
        let notify = container(LinuxSeccompAction::ScmpActNotify);
        let err = seccomp_for(&mut bare_process(), &notify).unwrap_err();
        assert!(err.contains("notify"), "{err}");
    }
}
