//! Incremental sha256 of multipart uploads: while parts arrive, a background thread per upload
//! hashes the data file in part order, so completion usually has nothing left to read.
//!
//! Correctness never depends on it: completion falls back to hashing the whole file whenever
//! the incremental state is incomplete or "poisoned" — a part that was already hashed being
//! written again (its bytes may have changed), a read error, or an upload abandoned long enough
//! for its thread to exit.

use std::collections::{BTreeSet, HashMap};
use std::io::{Read as _, Seek as _};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::Duration;

use sha2::{Digest as _, Sha256};

/// An upload's hasher thread exits after this long without news.
const IDLE_EXIT: Duration = Duration::from_secs(1800);

enum Message {
    /// A write of part n begins.
    Started(u64),
    /// Part n is written whole.
    Done(u64),
    /// Completion: the digest, if every part was hashed in order and nothing was rewritten.
    Finish(tokio::sync::oneshot::Sender<Option<String>>),
}

/// The hasher threads of the uploads in progress, by object id.
#[derive(Default)]
pub struct IncrementalHashes {
    uploads: Mutex<HashMap<String, Sender<Message>>>,
}

impl IncrementalHashes {
    /// Notes that part `n` of the upload whose bytes go to `data` starts being written.
    pub fn started(&self, data: PathBuf, oid: &str, size: u64, chunk: u64, n: u64) {
        let mut uploads = self.uploads.lock().expect("hash map lock");
        let sender = uploads.entry(oid.to_owned()).or_insert_with(|| {
            let (sender, receiver) = channel();
            std::thread::spawn(move || run(&receiver, &data, size, chunk));
            sender
        });
        if sender.send(Message::Started(n)).is_err() {
            // The thread exited (idle): forget it; completion will hash the whole file.
            uploads.remove(oid);
        }
    }

    /// Notes that part `n` is written whole.
    pub fn done(&self, oid: &str, n: u64) {
        if let Some(sender) = self.uploads.lock().expect("hash map lock").get(oid) {
            let _ = sender.send(Message::Done(n));
        }
    }

    /// The sha256 of the whole upload if it could be computed incrementally.
    pub async fn finish(&self, oid: &str) -> Option<String> {
        let sender = self.uploads.lock().expect("hash map lock").remove(oid)?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        sender.send(Message::Finish(reply)).ok()?;
        answer.await.ok().flatten()
    }
}

fn run(receiver: &Receiver<Message>, data: &std::path::Path, size: u64, chunk: u64) {
    let count = size.div_ceil(chunk.max(1));
    let mut next = 1u64;
    let mut arrived = BTreeSet::new();
    let mut poisoned = false;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        match receiver.recv_timeout(IDLE_EXIT) {
            Ok(Message::Started(n)) => poisoned |= n < next,
            Ok(Message::Done(n)) => {
                arrived.insert(n);
                while !poisoned && arrived.remove(&next) {
                    let offset = (next - 1) * chunk;
                    let length = chunk.min(size - offset);
                    poisoned |= hash_range(data, offset, length, &mut hasher, &mut buffer).is_err();
                    next += 1;
                }
            }
            Ok(Message::Finish(reply)) => {
                let digest =
                    (!poisoned && next == count + 1).then(|| hex::encode(hasher.finalize()));
                let _ = reply.send(digest);
                return;
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return,
        }
    }
}

fn hash_range(
    data: &std::path::Path,
    offset: u64,
    length: u64,
    hasher: &mut Sha256,
    buffer: &mut [u8],
) -> std::io::Result<()> {
    let mut file = std::fs::File::open(data)?;
    file.seek(std::io::SeekFrom::Start(offset))?;
    let mut left = length;
    while left > 0 {
        let want = buffer.len().min(left as usize);
        file.read_exact(&mut buffer[..want])?;
        hasher.update(&buffer[..want]);
        left -= want as u64;
    }
    Ok(())
}
