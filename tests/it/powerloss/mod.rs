//! A power-loss filesystem for tests: a FUSE filesystem (the `fuser` crate) served by the test
//! process and mounted over a member's journal directory, which keeps what the member writes in
//! memory in two copies — what reads see, and what a power cut leaves — and moves data from the
//! first to the second only on `fsync`/`fdatasync` (file data, size included) and
//! `fsync` of a directory (its entries: create, rename, unlink). On command it
//! (a) cuts the power: every unsynced write and directory change is dropped at once and every
//! later call fails with EIO until [`PowerLoss::power_on`] (a frozen disk, so an fsync that starts
//! after the cut can never report dropped data as durable); (b) fails the next N fsyncs with EIO
//! — as Linux does, the data they covered is then never made durable by a later fsync unless it
//! is written again; (c) delays every fsync by a given time (a slow disk).
//!
//! The kernel's caches are off (`direct_io`, zero attribute and entry timeouts) so every read,
//! write and sync reaches this filesystem. Files have no owners or modes beyond what `stat`
//! needs; the test process runs as root.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

const ROOT: u64 = 1;

#[derive(Debug, Default, Clone)]
struct Node {
    dir: bool,
    /// What reads see.
    data: Vec<u8>,
    /// What survives a power cut.
    durable: Vec<u8>,
    /// Byte ranges written since the last sync (a failed sync forgets them, as Linux does).
    dirty: Vec<(usize, usize)>,
    entries: BTreeMap<OsString, u64>,
    durable_entries: BTreeMap<OsString, u64>,
    /// Directory entries changed since the directory's last sync.
    entries_dirty: bool,
}

#[derive(Debug, Default)]
struct State {
    nodes: BTreeMap<u64, Node>,
    next_ino: u64,
    /// Every call fails with EIO (the power is off).
    off: bool,
    /// Power cuts so far: a sync that began before one must not complete after it.
    cuts: u64,
    fail_next_syncs: u64,
    sync_delay: Duration,
}

/// Counters a test reads.
#[derive(Debug, Default)]
pub struct Counters {
    pub syncs: AtomicU64,
    pub failed_syncs: AtomicU64,
    pub dir_syncs: AtomicU64,
    pub dropped_bytes: AtomicU64,
    pub dropped_dir_changes: AtomicU64,
}

struct Fs {
    state: Arc<Mutex<State>>,
    counters: Arc<Counters>,
}

fn attr(ino: u64, node: &Node) -> FileAttr {
    let size = if node.dir { 0 } else { node.data.len() as u64 };
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: if node.dir {
            FileType::Directory
        } else {
            FileType::RegularFile
        },
        perm: if node.dir { 0o755 } else { 0o644 },
        nlink: if node.dir { 2 } else { 1 },
        uid: 0,
        gid: 0,
        rdev: 0,
        flags: 0,
        blksize: 4096,
    }
}

impl State {
    fn new() -> State {
        let mut nodes = BTreeMap::new();
        nodes.insert(
            ROOT,
            Node {
                dir: true,
                ..Node::default()
            },
        );
        State {
            nodes,
            next_ino: ROOT + 1,
            ..State::default()
        }
    }

    fn check(&self) -> Result<(), Errno> {
        if self.off {
            Err(Errno::EIO)
        } else {
            Ok(())
        }
    }

    fn node(&mut self, ino: INodeNo) -> Result<&mut Node, Errno> {
        self.nodes.get_mut(&ino.0).ok_or(Errno::ENOENT)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<u64, Errno> {
        self.nodes
            .get(&parent.0)
            .ok_or(Errno::ENOENT)?
            .entries
            .get(name)
            .copied()
            .ok_or(Errno::ENOENT)
    }

    fn add(&mut self, parent: INodeNo, name: &OsStr, dir: bool) -> Result<(u64, FileAttr), Errno> {
        if self.child(parent, name).is_ok() {
            return Err(Errno::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let node = Node {
            dir,
            ..Node::default()
        };
        let a = attr(ino, &node);
        self.nodes.insert(ino, node);
        let p = self.node(parent)?;
        p.entries.insert(name.to_os_string(), ino);
        p.entries_dirty = true;
        Ok((ino, a))
    }

    /// The power cut: everything not synced is gone.
    fn cut(&mut self, counters: &Counters) {
        for node in self.nodes.values_mut() {
            if node.dir {
                if node.entries != node.durable_entries {
                    counters.dropped_dir_changes.fetch_add(1, Ordering::Relaxed);
                }
                node.entries = node.durable_entries.clone();
                node.entries_dirty = false;
            } else {
                let dropped: usize = node.dirty.iter().map(|(a, b)| b - a).sum();
                counters
                    .dropped_bytes
                    .fetch_add(dropped as u64, Ordering::Relaxed);
                node.data = node.durable.clone();
                node.dirty.clear();
            }
        }
        self.off = true;
        self.cuts += 1;
    }
}

/// Makes `node`'s writes durable.
fn sync_file(node: &mut Node) {
    node.durable.resize(node.data.len(), 0);
    for (from, to) in std::mem::take(&mut node.dirty) {
        let to = to.min(node.data.len());
        if from < to {
            node.durable[from..to].copy_from_slice(&node.data[from..to]);
        }
    }
}

const TTL: Duration = Duration::ZERO;

impl Fs {
    /// Runs a sync of `ino`: waits the slow-disk delay (without the lock), then fails it or
    /// makes it durable — unless the power was cut meanwhile.
    fn sync(&self, ino: INodeNo, dir: bool) -> Result<(), Errno> {
        let (delay, cuts) = {
            let st = self.state.lock().unwrap();
            st.check()?;
            (st.sync_delay, st.cuts)
        };
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let mut st = self.state.lock().unwrap();
        st.check()?;
        if st.cuts != cuts {
            return Err(Errno::EIO);
        }
        if st.fail_next_syncs > 0 {
            st.fail_next_syncs -= 1;
            self.counters.failed_syncs.fetch_add(1, Ordering::Relaxed);
            // Linux forgets the failed pages' dirtiness: they are never written back.
            if let Ok(node) = st.node(ino) {
                node.dirty.clear();
            }
            return Err(Errno::EIO);
        }
        let node = st.node(ino)?;
        if dir {
            node.durable_entries = node.entries.clone();
            node.entries_dirty = false;
            self.counters.dir_syncs.fetch_add(1, Ordering::Relaxed);
        } else {
            sync_file(node);
            self.counters.syncs.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

fn set_len(node: &mut Node, len: usize) {
    let old = node.data.len();
    node.data.resize(len, 0);
    if len > old {
        node.dirty.push((old, len));
    } else {
        // Shrinking is a size change: the durable copy follows it at the next sync.
        node.dirty.push((len, len));
    }
}

impl Filesystem for Fs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let st = self.state.lock().unwrap();
        let found = st.check().and_then(|()| st.child(parent, name));
        match found {
            Ok(ino) => reply.entry(&TTL, &attr(ino, &st.nodes[&ino]), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let mut st = self.state.lock().unwrap();
        if let Err(e) = st.check() {
            return reply.error(e);
        }
        match st.node(ino) {
            Ok(n) => reply.attr(&TTL, &attr(ino.0, n)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut st = self.state.lock().unwrap();
        if let Err(e) = st.check() {
            return reply.error(e);
        }
        match st.node(ino) {
            Ok(n) => {
                if let Some(size) = size {
                    set_len(n, size as usize);
                }
                reply.attr(&TTL, &attr(ino.0, n))
            }
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let mut st = self.state.lock().unwrap();
        match st.check().and_then(|()| st.add(parent, name, true)) {
            Ok((_, a)) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut st = self.state.lock().unwrap();
        if let Err(e) = st.check() {
            return reply.error(e);
        }
        match st.node(parent) {
            Ok(p) => {
                if p.entries.remove(name).is_some() {
                    p.entries_dirty = true;
                    reply.ok()
                } else {
                    reply.error(Errno::ENOENT)
                }
            }
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.unlink(req, parent, name, reply)
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut st = self.state.lock().unwrap();
        if let Err(e) = st.check() {
            return reply.error(e);
        }
        let ino = match st.node(parent) {
            Ok(p) => match p.entries.remove(name) {
                Some(i) => {
                    p.entries_dirty = true;
                    i
                }
                None => return reply.error(Errno::ENOENT),
            },
            Err(e) => return reply.error(e),
        };
        match st.node(newparent) {
            Ok(p) => {
                p.entries.insert(newname.to_os_string(), ino);
                p.entries_dirty = true;
                reply.ok()
            }
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mut st = self.state.lock().unwrap();
        if let Err(e) = st.check() {
            return reply.error(e);
        }
        match st.node(ino) {
            Ok(n) => {
                if flags.0 & libc::O_TRUNC != 0 && !n.dir {
                    set_len(n, 0);
                }
                reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO)
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let mut st = self.state.lock().unwrap();
        if let Err(e) = st.check() {
            return reply.error(e);
        }
        match st.node(ino) {
            Ok(n) => {
                let from = (offset as usize).min(n.data.len());
                let to = (from + size as usize).min(n.data.len());
                reply.data(&n.data[from..to])
            }
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut st = self.state.lock().unwrap();
        if let Err(e) = st.check() {
            return reply.error(e);
        }
        match st.node(ino) {
            Ok(n) => {
                let from = offset as usize;
                let to = from + data.len();
                if n.data.len() < to {
                    n.data.resize(to, 0);
                }
                n.data[from..to].copy_from_slice(data);
                n.dirty.push((from, to));
                reply.written(data.len() as u32)
            }
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close() is not a sync.
        reply.ok()
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.sync(ino, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut st = self.state.lock().unwrap();
        if let Err(e) = st.check() {
            return reply.error(e);
        }
        let entries: Vec<(u64, bool, OsString)> = match st.node(ino) {
            Ok(d) => d
                .entries
                .iter()
                .map(|(name, i)| (*i, false, name.clone()))
                .collect(),
            Err(e) => return reply.error(e),
        };
        let mut all = vec![
            (ino.0, true, OsString::from(".")),
            (ROOT, true, OsString::from("..")),
        ];
        for (i, _, name) in entries {
            let dir = st.nodes.get(&i).is_some_and(|n| n.dir);
            all.push((i, dir, name));
        }
        for (k, (i, dir, name)) in all.into_iter().enumerate().skip(offset as usize) {
            let kind = if dir {
                FileType::Directory
            } else {
                FileType::RegularFile
            };
            if reply.add(INodeNo(i), (k + 1) as u64, kind, &name) {
                break;
            }
        }
        reply.ok()
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.sync(ino, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // 64 GiB free in 4 KiB blocks.
        reply.statfs(1 << 24, 1 << 24, 1 << 24, 1 << 20, 1 << 20, 4096, 255, 4096);
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let mut st = self.state.lock().unwrap();
        match st.check().and_then(|()| st.add(parent, name, false)) {
            Ok((_, a)) => reply.created(
                &TTL,
                &a,
                Generation(0),
                FileHandle(0),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if mode != 0 {
            return reply.error(Errno::EOPNOTSUPP);
        }
        let mut st = self.state.lock().unwrap();
        if let Err(e) = st.check() {
            return reply.error(e);
        }
        match st.node(ino) {
            Ok(n) => {
                let end = (offset + length) as usize;
                if n.data.len() < end {
                    set_len(n, end);
                }
                reply.ok()
            }
            Err(e) => reply.error(e),
        }
    }
}

/// The mounted filesystem and its controls; unmounted on drop.
pub struct PowerLoss {
    mountpoint: PathBuf,
    state: Arc<Mutex<State>>,
    pub counters: Arc<Counters>,
    session: Option<fuser::BackgroundSession>,
}

impl PowerLoss {
    /// A `local_disk` broker (the harness's defaults otherwise) whose journal lives on a
    /// power-loss disk mounted under `data`. Bound as `let (disk, mut broker) = ...`, the
    /// broker is dropped before the disk, which is unmounted once nothing uses it.
    pub fn local_disk_broker(data: &Path) -> (PowerLoss, crate::common::Broker) {
        let disk = PowerLoss::mount(&data.join("journal"));
        let broker = crate::common::Broker::start(
            &crate::common::Config::new()
                .data_dir(data)
                .group("sync = \"local_disk\""),
        );
        (disk, broker)
    }

    /// Mounts an empty power-loss filesystem on `mountpoint` (created if missing). Fails the
    /// test with the reason when FUSE is not usable here.
    pub fn mount(mountpoint: &Path) -> PowerLoss {
        std::fs::create_dir_all(mountpoint).expect("create the mount point");
        let state = Arc::new(Mutex::new(State::new()));
        let counters = Arc::new(Counters::default());
        let fs = Fs {
            state: state.clone(),
            counters: counters.clone(),
        };
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            MountOption::FSName("meshmq-powerloss".into()),
            MountOption::NoAtime,
        ];
        config.n_threads = Some(4);
        let session = fuser::spawn_mount(fs, mountpoint, &config).unwrap_or_else(|e| {
            panic!(
                "cannot mount the power-loss FUSE filesystem on {}: {e} \
                 (needs /dev/fuse, root, and fusermount3 from Debian's fuse3: `make test-deps`)",
                mountpoint.display()
            )
        });
        let pl = PowerLoss {
            mountpoint: mountpoint.to_path_buf(),
            state,
            counters,
            session: Some(session),
        };
        // The mount is live once the kernel answers through it.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !is_mounted(mountpoint) {
            assert!(
                std::time::Instant::now() < deadline,
                "the power-loss filesystem did not appear on {}",
                mountpoint.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        pl
    }

    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// Cuts the power: drops every unsynced write and directory change, and fails every call
    /// with EIO until [`PowerLoss::power_on`]. Returns the bytes dropped by this cut.
    pub fn cut(&self) -> u64 {
        let before = self.counters.dropped_bytes.load(Ordering::Relaxed);
        self.state.lock().unwrap().cut(&self.counters);
        self.counters.dropped_bytes.load(Ordering::Relaxed) - before
    }

    /// Powers the disk back on with what survived.
    pub fn power_on(&self) {
        self.state.lock().unwrap().off = false;
    }

    /// Fails the next `n` syncs (files and directories) with EIO.
    pub fn fail_next_syncs(&self, n: u64) {
        self.state.lock().unwrap().fail_next_syncs = n;
    }

    /// Delays every sync by `delay` (zero: none).
    pub fn delay_syncs(&self, delay: Duration) {
        self.state.lock().unwrap().sync_delay = delay;
    }
}

fn is_mounted(path: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    let want = path.display().to_string();
    mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(want.as_str()))
}

impl Drop for PowerLoss {
    fn drop(&mut self) {
        self.power_on();
        if let Some(session) = self.session.take() {
            if let Err(e) = session.umount_and_join() {
                eprintln!(
                    "unmounting {} failed ({e}); trying fusermount3 -u -z",
                    self.mountpoint.display()
                );
                let _ = std::process::Command::new("fusermount3")
                    .args(["-u", "-z"])
                    .arg(&self.mountpoint)
                    .status();
            }
        }
    }
}
