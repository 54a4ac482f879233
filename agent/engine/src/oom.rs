//! The OOM killer's kills in a container's memory cgroup, as the kernel
//! counts them: `oom_kill` in memory.events (cgroup v2) or in
//! memory.oom_control (v1). A process's caller compares the count at its
//! start and its end to tell whether the container met the OOM killer
//! meanwhile, as runc's shim learns from the cgroup's OOM events.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct OomKills {
    file: PathBuf,
}

impl OomKills {
    pub fn v2(cgroup_dir: &Path) -> Self {
        OomKills {
            file: cgroup_dir.join("memory.events"),
        }
    }

    pub fn v1(memory_cgroup_dir: &Path) -> Self {
        OomKills {
            file: memory_cgroup_dir.join("memory.oom_control"),
        }
    }

    /// The kills so far; 0 where the file cannot be read (the cgroup is
    /// gone, or the kernel does not count them).
    pub fn count(&self) -> u64 {
        std::fs::read_to_string(&self.file)
            .ok()
            .and_then(|text| parse(&text))
            .unwrap_or(0)
    }
}

fn parse(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_files_name_the_count_oom_kill() {
        let v2 = "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(parse(v2), Some(2));
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 5\n";
        assert_eq!(parse(v1), Some(5));
        assert_eq!(parse("oom_kill_disable 0\n"), None);
    }

    #[test]
    fn an_unreadable_counter_counts_nothing() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(OomKills::v2(&dir.path().join("gone")).count(), 0);
        std::fs::write(dir.path().join("memory.events"), "oom_kill 7\n").unwrap();
        assert_eq!(OomKills::v2(dir.path()).count(), 7);
    }
}
