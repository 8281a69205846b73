//! The history file: an append-only JSON Lines log of chat messages, each line exactly the frame
//! that was broadcast, so that history and message ids survive a restart.
//!
//! On start the file is read back; a torn last line (a crash in the middle of a write) is logged
//! and cut off. Appends go through a buffer that the event loop flushes once per input (one
//! `write` call); `fsync` follows `history.fsync`. With channels each line carries its channel.
//!
//! The file does not decide what to keep: the hub does (each channel's last N). When the file
//! holds twice what the hub keeps, the event loop rewrites it with just the hub's history
//! ([`HistoryFile::compact`]: write to a temporary file, sync, rename).

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use async_tungstenite::tungstenite::Utf8Bytes;
use log::warn;

use crate::config::Fsync;

/// An open history file.
pub struct HistoryFile {
    path: PathBuf,
    writer: BufWriter<File>,
    fsync: Fsync,
    /// Lines in the file now.
    lines: usize,
    /// Written to the OS but not yet synced to disk.
    unsynced: bool,
}

/// What was read back from a history file.
pub struct Loaded {
    pub file: HistoryFile,
    /// Every message in the file, oldest first, with their ids.
    pub messages: Vec<(u64, Utf8Bytes)>,
    /// Whether a torn last line was cut off.
    pub repaired: bool,
}

impl HistoryFile {
    /// Opens (or creates) the file, repairs a torn last line, and returns its messages.
    pub fn open(path: &Path, fsync: Fsync) -> io::Result<Loaded> {
        let mut file = OpenOptions::new().read(true).append(true).create(true).open(path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let (entries, good_len) = parse(&bytes, path);
        let repaired = good_len < bytes.len();
        if repaired {
            file.set_len(good_len as u64)?;
            file.sync_all()?;
            warn!(
                "history: {} ended with a torn line ({} bytes); cut it off",
                path.display(),
                bytes.len() - good_len
            );
        }
        file.seek(SeekFrom::End(0))?;
        let history = HistoryFile {
            path: path.to_path_buf(),
            writer: BufWriter::new(file),
            fsync,
            lines: entries.len(),
            unsynced: false,
        };
        Ok(Loaded { file: history, messages: entries, repaired })
    }

    /// Appends one line to the buffer. With `fsync: always` it is written and synced before this
    /// returns; otherwise [`flush`](Self::flush) writes it.
    pub fn append(&mut self, line: &Utf8Bytes) -> io::Result<()> {
        self.writer.write_all(line.as_bytes())?;
        self.writer.write_all(b"\n")?;
        self.lines += 1;
        if self.fsync == Fsync::Always {
            self.writer.flush()?;
            self.writer.get_ref().sync_data()?;
        } else {
            self.unsynced = true;
        }
        Ok(())
    }

    /// Hands buffered lines to the OS (one `write` call for a small batch).
    pub fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }

    /// Syncs to disk if anything was written since the last sync (`fsync: interval`, and at
    /// shutdown).
    pub fn sync(&mut self) -> io::Result<()> {
        self.writer.flush()?;
        if self.unsynced && self.fsync != Fsync::Never {
            self.writer.get_ref().sync_data()?;
        }
        self.unsynced = false;
        Ok(())
    }

    /// Lines in the file.
    pub fn lines(&self) -> usize {
        self.lines
    }

    /// Rewrites the file with only `keep`, the history the hub holds, oldest first.
    pub fn compact(&mut self, keep: &[Utf8Bytes]) -> io::Result<()> {
        self.writer.flush()?;
        let mut out = Vec::with_capacity(keep.iter().map(|l| l.len() + 1).sum());
        for line in keep {
            out.extend_from_slice(line.as_bytes());
            out.push(b'\n');
        }
        write_atomically(&self.path, &out)?;
        let file = OpenOptions::new().append(true).open(&self.path)?;
        self.writer = BufWriter::new(file);
        self.lines = keep.len();
        self.unsynced = false;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Replaces the file at `path` with `bytes` so that a crash leaves either the old file or the
/// new one, never a part: written to `PATH.tmp`, synced, renamed over it.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// Parses every complete line; returns the messages and the length of the good prefix. A last
/// line that is not complete JSON with an id is torn; a bad line in the middle is skipped.
fn parse(bytes: &[u8], path: &Path) -> (Vec<(u64, Utf8Bytes)>, usize) {
    let mut entries = Vec::new();
    let mut good_len = 0;
    let mut start = 0;
    while start < bytes.len() {
        let Some(newline) = bytes[start..].iter().position(|&b| b == b'\n') else {
            break; // no newline: the last write was torn
        };
        let end = start + newline;
        let line = &bytes[start..end];
        let is_last = end + 1 == bytes.len();
        match id_of(line) {
            Some(id) => {
                let text = String::from_utf8_lossy(line).into_owned();
                entries.push((id, Utf8Bytes::from(text)));
                good_len = end + 1;
            }
            None if is_last => break,
            None => {
                warn!("history: {} has an unreadable line; skipped", path.display());
                good_len = end + 1;
            }
        }
        start = end + 1;
    }
    (entries, good_len)
}

fn id_of(line: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Id {
        id: u64,
    }
    serde_json::from_slice::<Id>(line).ok().map(|m| m.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let path = std::env::temp_dir()
            .join(format!("shequ-chat-history-{}-{name}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&path);
        path
    }

    fn line(id: u64) -> Utf8Bytes {
        Utf8Bytes::from(format!(r#"{{"type":"chat","id":{id},"content":"m{id}"}}"#))
    }

    #[test]
    fn appends_survive_reopening() {
        let path = temp("reopen");
        let mut loaded = HistoryFile::open(&path, Fsync::Always).unwrap();
        assert!(loaded.messages.is_empty());
        for id in 1..=3 {
            loaded.file.append(&line(id)).unwrap();
        }
        drop(loaded);
        let loaded = HistoryFile::open(&path, Fsync::Always).unwrap();
        let ids: Vec<u64> = loaded.messages.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, vec![1, 2, 3]);
        assert_eq!(loaded.messages[2].1, line(3));
        assert!(!loaded.repaired);
    }

    #[test]
    fn torn_last_line_is_cut_off() {
        let path = temp("torn");
        std::fs::write(&path, format!("{}\n{}\n{{\"type\":\"ch", line(1), line(2))).unwrap();
        let loaded = HistoryFile::open(&path, Fsync::Interval).unwrap();
        assert!(loaded.repaired);
        assert_eq!(loaded.messages.len(), 2);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("{}\n{}\n", line(1), line(2)));
    }

    #[test]
    fn compaction_keeps_what_it_is_given_and_appends_go_on_after_it() {
        let path = temp("compact");
        let mut file = HistoryFile::open(&path, Fsync::Never).unwrap().file;
        for id in 1..=10 {
            file.append(&line(id)).unwrap();
        }
        assert_eq!(file.lines(), 10);
        file.compact(&[line(3), line(7), line(9)]).unwrap();
        assert_eq!(file.lines(), 3);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("{}\n{}\n{}\n", line(3), line(7), line(9)));
        file.append(&line(11)).unwrap();
        file.sync().unwrap();
        let loaded = HistoryFile::open(&path, Fsync::Never).unwrap();
        let ids: Vec<u64> = loaded.messages.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, vec![3, 7, 9, 11]);
    }
}
