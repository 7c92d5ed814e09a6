//! The Raft store of a manager: openraft's log, vote and state machine on redb, every value
//! sealed with ChaCha20-Poly1305 under the node's data key (DEK), so the store's files hold no
//! plaintext node name, label, secret or CA key. Only the keys (log indexes) are in the clear.
//! Each sealed value is `nonce (12 bytes) || ciphertext+tag`, with the table and key as
//! associated data, so a value moved to another slot does not open.
//!
//! The state machine lives in memory ([`ClusterState`]) and is rebuilt at start from the last
//! snapshot plus the committed log; snapshots are written sealed too, and the log is compacted
//! behind them by openraft's snapshot policy.

// openraft's trait methods return its own (large) error types; there is no other way to spell them.
#![allow(clippy::result_large_err)]

use std::collections::VecDeque;
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, LogState, RaftLogReader, RaftSnapshotBuilder,
    Snapshot, SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use serde::{Serialize, de::DeserializeOwned};

use crate::objects::TasksByNode;
use crate::raft::TypeConfig;
use crate::state::{ClusterState, CommandResult};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

type StoreResult<T> = Result<T, StorageError<u64>>;
type Meta = SnapshotMeta<u64, BasicNode>;

fn io<E: std::error::Error + 'static>(e: E) -> StorageError<u64> {
    StorageIOError::write(AnyError::new(&e)).into()
}

fn read_err<E: std::error::Error + 'static>(e: E) -> StorageError<u64> {
    StorageIOError::read(AnyError::new(&e)).into()
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SealError(String);

/// The data encryption key of the Raft store.
pub struct Dek(LessSafeKey);

impl Dek {
    pub fn new(key: &[u8]) -> Result<Dek, SealError> {
        UnboundKey::new(&CHACHA20_POLY1305, key)
            .map(|k| Dek(LessSafeKey::new(k)))
            .map_err(|_| SealError("the Raft data key must be 32 bytes".into()))
    }

    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> Vec<u8> {
        let nonce = crate::ids::random_bytes::<12>();
        let mut out = plain.to_vec();
        // Sealing only fails for inputs larger than ChaCha20's 256 GiB limit.
        self.0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut out,
            )
            .expect("a Raft record is far below the AEAD size limit");
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&out);
        sealed
    }

    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        if sealed.len() < 12 {
            return Err(SealError("a sealed Raft record is truncated".into()));
        }
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&sealed[..12]);
        let mut buf = sealed[12..].to_vec();
        let plain = self
            .0
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut buf,
            )
            .map_err(|_| {
                SealError("a Raft record does not open with this node's data key".into())
            })?;
        Ok(plain.to_vec())
    }
}

/// The redb database and the key its values are sealed with, shared by the log store and the
/// state machine.
#[derive(Clone)]
pub struct Db {
    db: Arc<redb::Database>,
    dek: Arc<Dek>,
}

impl Db {
    pub fn open(path: &Path, dek: Dek) -> Result<Db, redb::Error> {
        let db = redb::Database::create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(LOG)?;
        txn.open_table(META)?;
        txn.commit()?;
        Ok(Db {
            db: Arc::new(db),
            dek: Arc::new(dek),
        })
    }

    fn put_meta<T: Serialize>(&self, key: &str, value: &T) -> StoreResult<()> {
        let plain = serde_json::to_vec(value).map_err(io)?;
        let sealed = self.dek.seal(format!("meta/{key}").as_bytes(), &plain);
        let txn = self.db.begin_write().map_err(io)?;
        txn.open_table(META)
            .map_err(io)?
            .insert(key, sealed.as_slice())
            .map_err(io)?;
        txn.commit().map_err(io)
    }

    fn get_meta<T: DeserializeOwned>(&self, key: &str) -> StoreResult<Option<T>> {
        let txn = self.db.begin_read().map_err(read_err)?;
        let table = txn.open_table(META).map_err(read_err)?;
        let Some(sealed) = table.get(key).map_err(read_err)? else {
            return Ok(None);
        };
        let plain = self
            .dek
            .open(format!("meta/{key}").as_bytes(), sealed.value())
            .map_err(read_err)?;
        Ok(Some(serde_json::from_slice(&plain).map_err(read_err)?))
    }

    /// The snapshot's metadata (JSON) and its data (raw bytes), each sealed in its own slot.
    /// Before, both went as one JSON value, the data as an array of numbers: about four bytes
    /// of JSON per byte (tens of MB at 30,000 tasks), written and parsed at every snapshot.
    fn put_snapshot(&self, meta: &SnapshotMeta<u64, BasicNode>, data: &[u8]) -> StoreResult<()> {
        let meta = serde_json::to_vec(meta).map_err(io)?;
        let meta = self.dek.seal(b"meta/snapshot.meta", &meta);
        let data = self.dek.seal(b"meta/snapshot.data", data);
        let txn = self.db.begin_write().map_err(io)?;
        {
            let mut table = txn.open_table(META).map_err(io)?;
            table.insert("snapshot.meta", meta.as_slice()).map_err(io)?;
            table.insert("snapshot.data", data.as_slice()).map_err(io)?;
            table.remove("snapshot").map_err(io)?;
        }
        txn.commit().map_err(io)
    }

    /// The last snapshot, in either layout (a store written before `put_snapshot` holds one
    /// JSON value under `snapshot`).
    fn get_snapshot(&self) -> StoreResult<Option<(Meta, Vec<u8>)>> {
        let sealed = {
            let txn = self.db.begin_read().map_err(read_err)?;
            let table = txn.open_table(META).map_err(read_err)?;
            let meta = table.get("snapshot.meta").map_err(read_err)?;
            let data = table.get("snapshot.data").map_err(read_err)?;
            meta.zip(data)
                .map(|(m, d)| (m.value().to_vec(), d.value().to_vec()))
        };
        let Some((meta, data)) = sealed else {
            return Ok(self
                .get_meta::<StoredSnapshot>("snapshot")?
                .map(|s| (s.meta, s.data)));
        };
        let meta = self
            .dek
            .open(b"meta/snapshot.meta", &meta)
            .map_err(read_err)?;
        let meta = serde_json::from_slice(&meta).map_err(read_err)?;
        let data = self
            .dek
            .open(b"meta/snapshot.data", &data)
            .map_err(read_err)?;
        Ok(Some((meta, data)))
    }

    fn log_aad(index: u64) -> Vec<u8> {
        format!("log/{index}").into_bytes()
    }

    fn read_entries<RB: RangeBounds<u64>>(&self, range: RB) -> StoreResult<Vec<Entry<TypeConfig>>> {
        let txn = self.db.begin_read().map_err(read_err)?;
        let table = txn.open_table(LOG).map_err(read_err)?;
        let mut entries = Vec::new();
        for item in table.range(range).map_err(read_err)? {
            let (key, value) = item.map_err(read_err)?;
            let plain = self
                .dek
                .open(&Self::log_aad(key.value()), value.value())
                .map_err(read_err)?;
            entries.push(serde_json::from_slice(&plain).map_err(read_err)?);
        }
        Ok(entries)
    }
}

/// openraft's log storage.
#[derive(Clone)]
pub struct LogStore {
    db: Db,
    recent: Arc<Mutex<Recent>>,
}

impl LogStore {
    pub fn new(db: Db) -> LogStore {
        LogStore {
            db,
            recent: Arc::default(),
        }
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The last entries appended, as appended: the leader reads each new entry back once per
/// follower to send it, and opening and parsing a sealed entry of 500 tasks again for each
/// was a tenth of the leader's work while it created 30,000 tasks.
#[derive(Default)]
struct Recent {
    /// Consecutive indexes, the newest last.
    entries: VecDeque<Entry<TypeConfig>>,
}

impl Recent {
    const KEEP: usize = 32;

    fn first(&self) -> Option<u64> {
        self.entries.front().map(|e| e.log_id.index)
    }

    fn push(&mut self, entry: Entry<TypeConfig>) {
        let next = self.first().map(|f| f + self.entries.len() as u64);
        if next.is_some_and(|n| n != entry.log_id.index) {
            self.entries.clear();
        }
        self.entries.push_back(entry);
        while self.entries.len() > Self::KEEP {
            self.entries.pop_front();
        }
    }

    /// Forgets `index` and everything after it.
    fn truncate(&mut self, index: u64) {
        let keep = self.first().map_or(0, |f| index.saturating_sub(f) as usize);
        self.entries.truncate(keep);
    }

    /// Forgets everything up to `index`.
    fn purge(&mut self, index: u64) {
        while self.first().is_some_and(|f| f <= index) {
            self.entries.pop_front();
        }
    }

    /// `range` when every entry of it is here.
    fn get<RB: RangeBounds<u64>>(&self, range: &RB) -> Option<Vec<Entry<TypeConfig>>> {
        use std::ops::Bound;
        let first = self.first()?;
        let end = first + self.entries.len() as u64;
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s.checked_add(1)?,
            Bound::Unbounded => 0,
        };
        let stop = match range.end_bound() {
            Bound::Included(&e) => e.checked_add(1)?,
            Bound::Excluded(&e) => e,
            Bound::Unbounded => end,
        };
        if start < first || stop > end {
            return None;
        }
        let (from, to) = ((start - first) as usize, (stop.max(start) - first) as usize);
        Some(self.entries.range(from..to).cloned().collect())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> StoreResult<Vec<Entry<TypeConfig>>> {
        if let Some(entries) = self.recent().get(&range) {
            return Ok(entries);
        }
        self.db.read_entries(range)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StoreResult<LogState<TypeConfig>> {
        let last_purged: Option<LogId<u64>> = self.db.get_meta("last_purged")?;
        let last = {
            let txn = self.db.db.begin_read().map_err(read_err)?;
            let table = txn.open_table(LOG).map_err(read_err)?;
            match table.last().map_err(read_err)? {
                Some((key, value)) => {
                    let plain = self
                        .db
                        .dek
                        .open(&Db::log_aad(key.value()), value.value())
                        .map_err(read_err)?;
                    let entry: Entry<TypeConfig> =
                        serde_json::from_slice(&plain).map_err(read_err)?;
                    Some(entry.log_id)
                }
                None => None,
            }
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> StoreResult<()> {
        self.db.put_meta("vote", vote)
    }

    async fn read_vote(&mut self) -> StoreResult<Option<Vote<u64>>> {
        self.db.get_meta("vote")
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> StoreResult<()> {
        self.db.put_meta("committed", &committed)
    }

    async fn read_committed(&mut self) -> StoreResult<Option<LogId<u64>>> {
        Ok(self
            .db
            .get_meta::<Option<LogId<u64>>>("committed")?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StoreResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let txn = self.db.db.begin_write().map_err(io)?;
        let mut written = Vec::new();
        {
            let mut table = txn.open_table(LOG).map_err(io)?;
            for entry in entries {
                let index = entry.log_id.index;
                let plain = serde_json::to_vec(&entry).map_err(io)?;
                let sealed = self.db.dek.seal(&Db::log_aad(index), &plain);
                table.insert(index, sealed.as_slice()).map_err(io)?;
                written.push(entry);
            }
        }
        txn.commit().map_err(io)?;
        let mut recent = self.recent();
        for entry in written {
            recent.push(entry);
        }
        drop(recent);
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> StoreResult<()> {
        self.recent().truncate(log_id.index);
        let txn = self.db.db.begin_write().map_err(io)?;
        txn.open_table(LOG)
            .map_err(io)?
            .retain_in(log_id.index.., |_, _| false)
            .map_err(io)?;
        txn.commit().map_err(io)
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> StoreResult<()> {
        self.recent().purge(log_id.index);
        self.db.put_meta("last_purged", &Some(log_id))?;
        let txn = self.db.db.begin_write().map_err(io)?;
        txn.open_table(LOG)
            .map_err(io)?
            .retain_in(..=log_id.index, |_, _| false)
            .map_err(io)?;
        txn.commit().map_err(io)?;
        tracing::info!("compacted the Raft log up to index {}", log_id.index);
        Ok(())
    }
}

/// The applied state, shared with the API (which reads it) and the state machine (which writes
/// it).
#[derive(Debug, Default)]
pub struct Applied {
    pub state: ClusterState,
    pub last_applied: Option<LogId<u64>>,
    pub last_membership: StoredMembership<u64, BasicNode>,
    /// The tasks of each node, kept up to date by `apply` (see `TasksByNode`).
    pub by_node: TasksByNode,
    /// The last applied index whose command the orchestrator must see: all but the statuses
    /// that nodes report of tasks going on (accepted to running), which matter to it only
    /// while it is busy with an update or a replacement (see `orchestrator::Plan::busy`).
    pub wake: u64,
}

/// Whether `command` may give the orchestrator work (see `Applied::wake`).
fn wakes_orchestrator(command: &crate::state::Command) -> bool {
    use crate::model::TaskState;
    use crate::objects::{ObjectCommand, TaskOp};
    let crate::state::Command::Objects(objects) = command else {
        return true;
    };
    let ObjectCommand::Tasks { ops, .. } = &**objects else {
        return true;
    };
    ops.iter().any(|op| match op {
        TaskOp::Status { status, .. } => status.state >= TaskState::Complete,
        _ => true,
    })
}

impl Applied {
    fn reset(&mut self, mut state: ClusterState, last_applied: Option<LogId<u64>>) {
        state.objects.share_specs();
        // Every node's stream looks again (a node that lost all its tasks too).
        let index = last_applied.map(|l| l.index).unwrap_or(0);
        self.state = state;
        self.last_applied = last_applied;
        self.by_node
            .after(&self.state, crate::objects::Touched::All, index);
        self.wake = index;
    }
}

pub type SharedState = Arc<RwLock<Applied>>;

/// The snapshot as stores written before `Db::put_snapshot` hold it (read only).
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<u64, BasicNode>,
    data: Vec<u8>,
}

/// openraft's state machine: applies commands to the shared state and keeps its snapshots.
#[derive(Clone)]
pub struct StateMachine {
    db: Db,
    pub shared: SharedState,
}

impl StateMachine {
    /// Loads the last snapshot, if any, into a fresh state.
    pub fn open(db: Db) -> StoreResult<StateMachine> {
        let machine = StateMachine {
            db,
            shared: SharedState::default(),
        };
        if let Some((meta, data)) = machine.db.get_snapshot()? {
            let state: ClusterState = serde_json::from_slice(&data).map_err(read_err)?;
            let mut applied = machine.shared.write().unwrap_or_else(|e| e.into_inner());
            applied.reset(state, meta.last_log_id);
            applied.last_membership = meta.last_membership;
        }
        Ok(machine)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> StoreResult<Snapshot<TypeConfig>> {
        // A clone of the state shares its task map (see `objects::Shared`): serialized outside
        // the lock, so the state machine goes on applying meanwhile.
        let (state, last_applied, last_membership) = {
            let applied = self.shared.read().unwrap_or_else(|e| e.into_inner());
            (
                applied.state.clone(),
                applied.last_applied,
                applied.last_membership.clone(),
            )
        };
        let data = serde_json::to_vec(&state).map_err(io)?;
        drop(state);
        let snapshot_id = match last_applied {
            Some(id) => format!(
                "{}-{}-{}",
                id.leader_id.term,
                id.index,
                crate::ids::new_id()
            ),
            None => format!("0-0-{}", crate::ids::new_id()),
        };
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership,
            snapshot_id,
        };
        self.db.put_snapshot(&meta, &data)?;
        tracing::info!(
            "built a Raft snapshot up to log index {}",
            last_applied.map(|l| l.index).unwrap_or(0)
        );
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> StoreResult<(Option<LogId<u64>>, StoredMembership<u64, BasicNode>)> {
        let applied = self.shared.read().unwrap_or_else(|e| e.into_inner());
        Ok((applied.last_applied, applied.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StoreResult<Vec<CommandResult>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut applied = self.shared.write().unwrap_or_else(|e| e.into_inner());
        let mut results = Vec::new();
        for entry in entries {
            applied.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => results.push(CommandResult::Ok),
                EntryPayload::Normal(command) => {
                    let index = entry.log_id.index;
                    if wakes_orchestrator(&command) {
                        applied.wake = index;
                    }
                    let touched = TasksByNode::before(&applied.state, &command);
                    let applied = &mut *applied;
                    results.push(applied.state.apply(index, command));
                    applied.by_node.after(&applied.state, touched, index);
                }
                EntryPayload::Membership(membership) => {
                    applied.last_membership = StoredMembership::new(Some(entry.log_id), membership);
                    results.push(CommandResult::Ok);
                }
            }
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StoreResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StoreResult<()> {
        let data = snapshot.into_inner();
        let state: ClusterState = serde_json::from_slice(&data).map_err(read_err)?;
        self.db.put_snapshot(meta, &data)?;
        drop(data);
        tracing::info!(
            "installed a Raft snapshot up to log index {}",
            meta.last_log_id.map(|l| l.index).unwrap_or(0)
        );
        let mut applied = self.shared.write().unwrap_or_else(|e| e.into_inner());
        applied.reset(state, meta.last_log_id);
        applied.last_membership = meta.last_membership.clone();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StoreResult<Option<Snapshot<TypeConfig>>> {
        Ok(self.db.get_snapshot()?.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_records_open_only_in_their_slot_and_hide_their_content() {
        let dek = Dek::new(&[7u8; 32]).unwrap();
        let sealed = dek.seal(b"log/5", b"hostname-secret-label");
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(
            dek.open(b"log/5", &sealed).unwrap(),
            b"hostname-secret-label"
        );
        assert!(dek.open(b"log/6", &sealed).is_err());
        assert!(
            Dek::new(&[8u8; 32])
                .unwrap()
                .open(b"log/5", &sealed)
                .is_err()
        );
        assert!(dek.open(b"log/5", &sealed[..5]).is_err());
    }

    #[test]
    fn recent_entries_answer_only_ranges_they_hold_whole() {
        let entry = |index| Entry::<TypeConfig> {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 0), index),
            payload: EntryPayload::Blank,
        };
        let indexes = |got: Option<Vec<Entry<TypeConfig>>>| {
            got.map(|v| v.iter().map(|e| e.log_id.index).collect::<Vec<_>>())
        };
        let mut recent = Recent::default();
        assert!(recent.get(&(1..3)).is_none());
        for i in 1..=40 {
            recent.push(entry(i));
        }
        // Only the last KEEP are kept.
        assert_eq!(indexes(recent.get(&(38..=40))), Some(vec![38, 39, 40]));
        assert_eq!(indexes(recent.get(&(39..))), Some(vec![39, 40]));
        assert!(recent.get(&(8..10)).is_none());
        assert!(recent.get(&(40..42)).is_none());
        // A conflicting tail is cut, and the new one follows on.
        recent.truncate(39);
        assert!(recent.get(&(38..40)).is_none());
        recent.push(entry(39));
        assert_eq!(indexes(recent.get(&(38..40))), Some(vec![38, 39]));
        recent.purge(38);
        assert!(recent.get(&(38..40)).is_none());
        assert_eq!(indexes(recent.get(&(39..40))), Some(vec![39]));
        // An entry that does not follow on starts afresh.
        recent.push(entry(60));
        assert!(recent.get(&(39..40)).is_none());
        assert_eq!(indexes(recent.get(&(60..61))), Some(vec![60]));
    }

    #[test]
    fn a_snapshot_reads_back_in_either_layout() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("raft.db"), Dek::new(&[7u8; 32]).unwrap()).unwrap();
        let meta = |id: &str| SnapshotMeta::<u64, BasicNode> {
            snapshot_id: id.into(),
            ..SnapshotMeta::default()
        };
        assert!(db.get_snapshot().unwrap().is_none());
        // As stores written before `put_snapshot` hold it.
        db.put_meta(
            "snapshot",
            &StoredSnapshot {
                meta: meta("old"),
                data: b"{\"old\":1}".to_vec(),
            },
        )
        .unwrap();
        let (m, data) = db.get_snapshot().unwrap().unwrap();
        assert_eq!(
            (m.snapshot_id.as_str(), &data[..]),
            ("old", &b"{\"old\":1}"[..])
        );
        db.put_snapshot(&meta("new"), b"{\"new\":2}").unwrap();
        let (m, data) = db.get_snapshot().unwrap().unwrap();
        assert_eq!(
            (m.snapshot_id.as_str(), &data[..]),
            ("new", &b"{\"new\":2}"[..])
        );
        assert!(db.get_meta::<StoredSnapshot>("snapshot").unwrap().is_none());
    }
}
