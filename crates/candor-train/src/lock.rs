//! One writer per run folder: `<run>/.lock`, an OS file lock (`flock`) held for the whole run,
//! with the holder's PID written in it for the error message. The OS releases the lock when
//! the process ends, however it ends, so a lock file left by a killed run is not "held" and
//! the next run takes it over (a stale lock needs no cleaning).

use anyhow::{bail, Context, Result};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The lock on a run folder; dropping it (or the process ending) releases it.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    pub path: PathBuf,
}

impl RunLock {
    /// Take `<dir>/.lock` (creating `dir`), or fail at once naming the folder and the PID of
    /// the process that holds it.
    pub fn acquire(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(".lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let who = if holder.is_empty() {
                    "another process".to_string()
                } else {
                    format!("another process (PID {holder})")
                };
                bail!(
                    "run folder {} is in use by {who}: one run writes to a folder at a time; \
                     wait for it to finish, stop it, or use another run folder (--run-dir)",
                    dir.display()
                );
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()))
            }
        }
        file.set_len(0)
            .and_then(|_| file.seek(SeekFrom::Start(0)))
            .and_then(|_| writeln!(file, "{}", std::process::id()))
            .and_then(|_| file.flush())
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(Self { _file: file, path })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_a_folder_fails_naming_the_folder_and_the_pid() {
        let dir = tempfile::tempdir().unwrap();
        let first = RunLock::acquire(dir.path()).unwrap();
        let e = RunLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(e.contains(&dir.path().display().to_string()), "{e}");
        assert!(e.contains(&format!("PID {}", std::process::id())), "{e}");
        drop(first);
        RunLock::acquire(dir.path()).expect("released on drop");
    }

    #[test]
    fn a_lock_file_left_by_a_dead_process_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        // a killed run leaves its file (with its PID) but no OS lock
        std::fs::write(dir.path().join(".lock"), "999999999\n").unwrap();
        let l = RunLock::acquire(dir.path()).expect("stale lock taken over");
        let pid = std::fs::read_to_string(&l.path).unwrap();
        assert_eq!(pid.trim(), std::process::id().to_string());
    }
}
