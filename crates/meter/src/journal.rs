//! The meter's write-ahead journal: memory-mapped, preallocated segment
//! files that a request's own thread appends frames to, under a mutex held
//! for one small copy. No system call, no task hand-off and no wait on the
//! hot path, yet a frame is in the kernel's page cache the moment `append`
//! returns, so it survives the process being killed (`kill -9`); the
//! indexer moves frames into the ledger store (and so onto disk, fsynced)
//! every [`crate::INDEX_EVERY`], after which their segments are recycled:
//! renamed, still mapped, their pages still in memory, so appends do not
//! fault pages in. What a power cut can lose is therefore the frames of
//! the last pass. The indexer copies the frames of this run straight out
//! of the mappings (no read of the files; a segment is not recycled while
//! a copy holds its mapping); only frames an earlier run left are read
//! from the files, and checked.
//!
//! Frame: `magic u32 | len u32 | segment u64 | crc32 u32 | kind u8 |
//! payload[len]`, padded to 8 bytes; the checksum covers the segment
//! number, kind and payload. Reading a segment after a crash skips
//! anything whose magic, length, segment number or checksum does not hold
//! (a torn last frame, pages written back out of order after a power cut,
//! frames left from the segment's previous life) and resynchronises on
//! the next 8-byte boundary.
//!
//! Segments are created by the indexer ahead of need (never on the hot
//! path). When none has room — the disk is full — frames wait in memory
//! (`overflow`) until the indexer has committed them ([`Journal::ack_memory`]);
//! from the first one on, later frames follow them there, so the indexer
//! always sees frames in order. Frames in memory do not survive a process
//! kill: only while the disk is full.
//!
//! Each append prefetches the next frames' cache lines for writing, so
//! that neither the frame's checksum (which reads what was just written)
//! nor the mutex's release waits for memory.
//!
//! Supported file systems: those where `fallocate` reserves the blocks
//! (ext4, XFS, tmpfs). On copy-on-write file systems (btrfs, ZFS) a write
//! to a mapped page can still need space, and a full disk would then stop
//! the process with SIGBUS.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, MutexGuard};

const MAGIC: u32 = 0x4753_4a32; // "GSJ2"
const HEADER: usize = 21;
/// Recycled segments kept for reuse, at most.
const KEEP_FREE: usize = 2;
/// Frames larger than this are refused (records are a few hundred bytes).
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// How far past the last frame the next frames' cache lines are fetched
/// ahead (a usage frame is about 128 bytes).
const PREFETCH_AHEAD: usize = 256;

/// Where a frame ends: the journal's read position after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

impl Position {
    pub fn to_bytes(self) -> [u8; 16] {
        let mut out = [0; 16];
        out[..8].copy_from_slice(&self.segment.to_be_bytes());
        out[8..].copy_from_slice(&self.offset.to_be_bytes());
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let segment = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
        let offset = u64::from_be_bytes(bytes.get(8..16)?.try_into().ok()?);
        Some(Self { segment, offset })
    }
}

/// One frame, owned (frames waiting in memory, and the tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: u8,
    pub payload: Vec<u8>,
}

/// One frame of a [`Read`]: where it ends in the journal (`None`: it came
/// from memory), its kind, and where its payload is in [`Read::bytes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameAt {
    pub at: Option<Position>,
    pub kind: u8,
    pub payload: std::ops::Range<usize>,
}

/// Frames read back, their payloads in one buffer.
#[derive(Debug, Default)]
pub struct Read {
    pub bytes: Vec<u8>,
    pub frames: Vec<FrameAt>,
}

impl Read {
    pub fn payload(&self, frame: &FrameAt) -> &[u8] {
        &self.bytes[frame.payload.clone()]
    }

    /// How many frames came from memory (to acknowledge once committed).
    pub fn from_memory(&self) -> usize {
        self.frames.iter().filter(|f| f.at.is_none()).count()
    }

    fn push(&mut self, at: Option<Position>, kind: u8, payload: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(payload);
        self.frames.push(FrameAt {
            at,
            kind,
            payload: start..self.bytes.len(),
        });
    }
}

fn frame_len(payload: usize) -> usize {
    (HEADER + payload).next_multiple_of(8)
}

fn checksum(segment: u64, kind: u8, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&segment.to_le_bytes());
    hasher.update(&[kind]);
    hasher.update(payload);
    hasher.finalize()
}

/// Writes one frame into `out` (which is `frame_len(len)` long), its
/// payload (`len` bytes) written in place by `payload`.
fn write_frame(
    out: &mut [u8],
    segment: u64,
    kind: u8,
    len: usize,
    payload: impl FnOnce(&mut [u8]),
) {
    let (header, body) = out.split_at_mut(HEADER);
    let (data, padding) = body.split_at_mut(len);
    payload(data);
    padding.fill(0);
    header[..4].copy_from_slice(&MAGIC.to_le_bytes());
    header[4..8].copy_from_slice(&(len as u32).to_le_bytes());
    header[8..16].copy_from_slice(&segment.to_le_bytes());
    header[16..20].copy_from_slice(&checksum(segment, kind, data).to_le_bytes());
    header[20] = kind;
}

/// Calls `f(end offset, kind, payload)` for each valid frame of `segment`
/// in `bytes` (which starts at an 8-byte boundary); damaged stretches and
/// frames of another segment are skipped. `verify`: check checksums (not
/// needed for what this process wrote and published itself).
fn each_frame(bytes: &[u8], segment: u64, verify: bool, mut f: impl FnMut(usize, u8, &[u8])) {
    let mut at = 0;
    while at + HEADER <= bytes.len() {
        let word = |i: usize| {
            let mut b = [0; 4];
            b.copy_from_slice(&bytes[at + i..at + i + 4]);
            u32::from_le_bytes(b)
        };
        let len = word(4) as usize;
        let ours = u64::from(word(8)) | u64::from(word(12)) << 32;
        if word(0) == MAGIC
            && ours == segment
            && len <= MAX_PAYLOAD
            && at + frame_len(len) <= bytes.len()
        {
            let kind = bytes[at + 20];
            let payload = &bytes[at + HEADER..at + HEADER + len];
            if !verify || checksum(segment, kind, payload) == word(16) {
                at += frame_len(len);
                f(at, kind, payload);
                continue;
            }
        }
        at += 8;
    }
}

/// The valid frames of `segment` in `bytes`, each with the offset just past it.
pub fn parse_frames(bytes: &[u8], segment: u64) -> Vec<(usize, Frame)> {
    let mut out = Vec::new();
    each_frame(bytes, segment, true, |end, kind, payload| {
        out.push((
            end,
            Frame {
                kind,
                payload: payload.to_vec(),
            },
        ));
    });
    out
}

/// A shared, writable mapping of a whole segment file.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value. Its bytes are
// written only through `write_at`, whose callers hold the journal's mutex
// and write past what was published; they are read only through
// `copy_out`, of bytes published under that mutex (see both).
unsafe impl Send for Mapping {}
// SAFETY: as above; shared between the writer and the journal's reader.
unsafe impl Sync for Mapping {}

impl Mapping {
    fn new(file: &File, len: usize) -> io::Result<Self> {
        // SAFETY: a fresh mapping (no address hint) of a file this process
        // created and preallocated to `len` bytes and never truncates, so
        // every page is backed and no access can fault.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::SHARED,
                file,
                0,
            )
        }?;
        let ptr =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave null"))?;
        Ok(Self { ptr, len })
    }

    /// Makes every page writable now, so that appends do not fault. A
    /// shared file mapping takes a fault on the first write to each page,
    /// and again after the kernel has written the page back (the file
    /// system must note it dirty): in a new segment and in a recycled
    /// one. Done here, from the indexer, as one call rather than one
    /// fault per page on request threads. Best effort: a kernel without
    /// `MADV_POPULATE_WRITE` (before 5.14) gets each page touched instead.
    fn populate(&self) {
        // SAFETY: advice over exactly this live mapping; populating
        // changes no byte of it.
        let advised = unsafe {
            rustix::mm::madvise(
                self.ptr.as_ptr().cast(),
                self.len,
                rustix::mm::Advice::LinuxPopulateWrite,
            )
        };
        if advised.is_err() {
            for at in (0..self.len).step_by(4096) {
                // SAFETY: in bounds (`at < len`). Rewrites the byte it
                // holds: a write the compiler keeps, which changes nothing
                // for a reader of it.
                unsafe {
                    let byte = self.ptr.as_ptr().add(at);
                    std::ptr::write_volatile(byte, std::ptr::read_volatile(byte));
                }
            }
        }
    }

    /// The bytes `at..at + len`, to write.
    ///
    /// # Safety
    /// Nothing else reads or writes these bytes while the slice lives: the
    /// caller holds the journal's mutex and writes past the segment's
    /// published end, or owns a segment no one else can see.
    #[allow(clippy::mut_from_ref)]
    unsafe fn write_at(&self, at: usize, len: usize) -> &mut [u8] {
        assert!(at.checked_add(len).is_some_and(|end| end <= self.len));
        // SAFETY: in bounds (checked above) of a live mapping; exclusive
        // by the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(at), len) }
    }

    /// Asks the CPU to bring the cache lines of `at..at + len` (clamped to
    /// the mapping) in for writing, without waiting for them. The next
    /// frames go there: written while their lines are still in memory,
    /// not cache, the frame's checksum (which reads what was just written)
    /// and the mutex's release (which waits for every store) would stall
    /// the request's thread on each line.
    fn prefetch_for_write(&self, at: usize, len: usize) {
        #[cfg(target_arch = "x86_64")]
        for line in (at..at.saturating_add(len).min(self.len)).step_by(64) {
            use std::arch::x86_64::{_MM_HINT_ET0, _mm_prefetch};
            // SAFETY: a prefetch is a hint: it reads and writes nothing and
            // never faults; the address is inside the mapping anyway.
            unsafe { _mm_prefetch::<_MM_HINT_ET0>(self.ptr.as_ptr().add(line).cast()) };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (at, len);
    }

    /// Copies the bytes from `at` into `out` (no system call, unlike a
    /// read of the file, and no page-cache lookup).
    ///
    /// # Safety
    /// No one writes these bytes meanwhile: they were published (below a
    /// segment's end, under the journal's mutex, which the caller took
    /// since), and the caller holds this mapping's `Arc`, so the segment
    /// is not recycled (rewritten) until the copy is done.
    unsafe fn copy_out(&self, at: usize, out: &mut [u8]) {
        assert!(at.checked_add(out.len()).is_some_and(|end| end <= self.len));
        // SAFETY: in bounds (checked above) of a live mapping, and `out`
        // is other memory; nothing writes the source (the caller's contract).
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(at), out.as_mut_ptr(), out.len())
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`, once.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// A segment being written.
struct Writable {
    seq: u64,
    /// Shared with the journal's reader while it copies frames out.
    map: Arc<Mapping>,
    end: usize,
}

#[derive(Default)]
struct State {
    current: Option<Writable>,
    spare: Option<Writable>,
    /// Full, until their frames are indexed.
    sealed: Vec<Writable>,
    /// Indexed, to be reused.
    free: Vec<Writable>,
    next_seq: u64,
    overflow: Vec<Frame>,
}

/// The journal of one ledger (one directory).
pub struct Journal {
    dir: PathBuf,
    segment_bytes: usize,
    state: Mutex<State>,
    /// Segments from before the last start, until recovery has indexed them.
    recovered: Mutex<Vec<PathBuf>>,
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016}.journal"))
}

impl Journal {
    /// Opens the journal in `dir` (created if missing) and reads every
    /// frame that earlier runs left in it, with its position. The old
    /// segments stay until [`Journal::discard_recovered`].
    /// Segment numbers start after `after_segment` (the last position
    /// committed), so that a journal directory that lost its files never
    /// reuses a number.
    pub fn open(dir: &Path, segment_bytes: usize, after_segment: u64) -> io::Result<(Self, Read)> {
        std::fs::create_dir_all(dir)?;
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let seq = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".journal"))
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(seq) = seq {
                found.push((seq, path));
            }
        }
        found.sort();
        let mut frames = Read::default();
        for (seq, path) in &found {
            let bytes = std::fs::read(path)?;
            each_frame(&bytes, *seq, true, |end, kind, payload| {
                let at = Position {
                    segment: *seq,
                    offset: end as u64,
                };
                frames.push(Some(at), kind, payload);
            });
        }
        let next_seq = found.last().map_or(0, |(seq, _)| *seq).max(after_segment) + 1;
        let journal = Self {
            dir: dir.to_path_buf(),
            segment_bytes: segment_bytes.next_multiple_of(4096),
            state: Mutex::new(State {
                next_seq,
                ..State::default()
            }),
            recovered: Mutex::new(found.into_iter().map(|(_, path)| path).collect()),
        };
        Ok((journal, frames))
    }

    /// Deletes the segments [`Journal::open`] read, once their frames are indexed.
    pub fn discard_recovered(&self) -> io::Result<()> {
        let paths = std::mem::take(&mut *lock(&self.recovered));
        for path in paths {
            std::fs::remove_file(&path)?;
        }
        Ok(())
    }

    /// Appends a frame. Returns `false` if it waits in memory (no segment
    /// had room: the indexer takes it from there).
    pub fn append(&self, kind: u8, payload: &[u8]) -> bool {
        self.append_with(kind, payload.len(), |out| out.copy_from_slice(payload))
    }

    /// [`Journal::append`] of a payload `len` bytes long that `payload`
    /// writes in place (into the segment, with no copy in between).
    pub fn append_with(&self, kind: u8, len: usize, payload: impl FnOnce(&mut [u8])) -> bool {
        let frame = frame_len(len);
        let mut state = lock(&self.state);
        // A frame too large to read back from a segment waits in memory.
        if state.overflow.is_empty() && len <= MAX_PAYLOAD {
            let fits =
                |w: &Option<Writable>| w.as_ref().is_some_and(|w| w.end + frame <= w.map.len);
            if !fits(&state.current) && fits(&state.spare) {
                let spare = state.spare.take();
                if let Some(full) = std::mem::replace(&mut state.current, spare) {
                    state.sealed.push(full);
                }
            }
            if let Some(current) = state
                .current
                .as_mut()
                .filter(|c| c.end + frame <= c.map.len)
            {
                let at = current.end;
                let seq = current.seq;
                // SAFETY: under the journal's mutex, past the published
                // end (`at`): no reader copies these bytes yet.
                let out = unsafe { current.map.write_at(at, frame) };
                write_frame(out, seq, kind, len, payload);
                current.end += frame;
                current.map.prefetch_for_write(current.end, PREFETCH_AHEAD);
                return true;
            }
        }
        let mut bytes = vec![0; len];
        payload(&mut bytes);
        state.overflow.push(Frame {
            kind,
            payload: bytes,
        });
        false
    }

    /// Makes sure a segment is ready for what comes next: a current one,
    /// and a spare once the current one is half full. Called by the
    /// indexer, never on the hot path (it allocates disk space).
    pub fn prepare(&self) -> io::Result<()> {
        let (needed, seq, free) = {
            let mut state = lock(&self.state);
            let needed = match &state.current {
                None => true,
                Some(current) => state.spare.is_none() && current.end * 2 >= current.map.len,
            };
            let seq = state.next_seq;
            if needed {
                state.next_seq += 1;
            }
            // A segment whose mapping a reader still holds (copying frames
            // out) is not rewritten yet: it waits in `free`.
            let free = needed
                .then(|| {
                    let idle = state
                        .free
                        .iter()
                        .rposition(|w| Arc::strong_count(&w.map) == 1)?;
                    Some(state.free.remove(idle))
                })
                .flatten();
            (needed, seq, free)
        };
        if !needed {
            return Ok(());
        }
        let path = segment_path(&self.dir, seq);
        if let Some(mut segment) = free {
            // Reuse: the old frames stay but carry the old number.
            std::fs::rename(segment_path(&self.dir, segment.seq), &path)?;
            segment.seq = seq;
            segment.end = 0;
            segment.map.populate();
            self.install(segment);
            return Ok(());
        }
        let made = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .and_then(|file| {
                rustix::fs::fallocate(
                    &file,
                    rustix::fs::FallocateFlags::empty(),
                    0,
                    self.segment_bytes as u64,
                )?;
                let map = Mapping::new(&file, self.segment_bytes)?;
                map.populate();
                Ok(Writable {
                    seq,
                    map: Arc::new(map),
                    end: 0,
                })
            });
        let segment = match made {
            Ok(segment) => segment,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(e);
            }
        };
        self.install(segment);
        Ok(())
    }

    fn install(&self, segment: Writable) {
        let mut state = lock(&self.state);
        if state.current.is_none() {
            state.current = Some(segment);
        } else {
            state.spare = Some(segment);
        }
    }

    /// Every frame after `from`, in order: from segments, then copies of
    /// those waiting in memory (they stay there until
    /// [`Journal::ack_memory`]).
    pub fn read(&self, from: Position) -> io::Result<Read> {
        let mut read = Read::default();
        self.read_into(from, &mut read)?;
        Ok(read)
    }

    /// [`Journal::read`] into `read` (cleared first), reusing its buffers.
    pub fn read_into(&self, from: Position, read: &mut Read) -> io::Result<()> {
        let (ranges, overflow) = {
            let state = lock(&self.state);
            let ranges: Vec<(u64, Arc<Mapping>, usize)> = state
                .sealed
                .iter()
                .chain(&state.current)
                .chain(&state.spare)
                .map(|w| (w.seq, w.map.clone(), w.end))
                .collect();
            (ranges, state.overflow.clone())
        };
        // The buffer keeps its length from pass to pass (bytes past what
        // this read fills are unused), so that it is not zeroed each time.
        let mut used = 0;
        read.frames.clear();
        for (seq, map, end) in ranges {
            let start = if seq == from.segment {
                from.offset as usize
            } else if seq > from.segment {
                0
            } else {
                continue;
            };
            if start >= end {
                continue;
            }
            // Frames point into the bytes as read: one copy.
            let base = used;
            used += end - start;
            if read.bytes.len() < used {
                read.bytes.resize(used, 0);
            }
            // SAFETY: below the end published under the mutex taken
            // above; `map` is held, so `prepare` does not recycle it.
            unsafe { map.copy_out(start, &mut read.bytes[base..used]) };
            let mut frames = std::mem::take(&mut read.frames);
            // Published whole under the lock: no need to verify.
            each_frame(
                &read.bytes[base..used],
                seq,
                false,
                |offset, kind, payload| {
                    let at = Position {
                        segment: seq,
                        offset: (start + offset) as u64,
                    };
                    let from = base + offset - frame_len(payload.len()) + HEADER;
                    frames.push(FrameAt {
                        at: Some(at),
                        kind,
                        payload: from..from + payload.len(),
                    });
                },
            );
            read.frames = frames;
        }
        if !overflow.is_empty() {
            // Frames from memory follow what was read.
            read.bytes.truncate(used);
        }
        for frame in overflow {
            read.push(None, frame.kind, &frame.payload);
        }
        Ok(())
    }

    /// Drops the first `count` frames waiting in memory: a read gave them
    /// and their index pass is committed.
    pub fn ack_memory(&self, count: usize) {
        let mut state = lock(&self.state);
        let count = count.min(state.overflow.len());
        state.overflow.drain(..count);
    }

    /// Recycles sealed segments whose every frame is at or before
    /// `indexed` (deletes those beyond [`KEEP_FREE`]).
    pub fn retire(&self, indexed: Position) -> io::Result<()> {
        let surplus: Vec<Writable> = {
            let mut state = lock(&self.state);
            let (done, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut state.sealed)
                .into_iter()
                .partition(|s| {
                    s.seq < indexed.segment
                        || (s.seq == indexed.segment && s.end as u64 <= indexed.offset)
                });
            state.sealed = keep;
            state.free.extend(done);
            let excess = state.free.len().saturating_sub(KEEP_FREE);
            state.free.drain(..excess).collect()
        };
        for segment in surplus {
            std::fs::remove_file(segment_path(&self.dir, segment.seq))?;
        }
        Ok(())
    }

    /// The position a fresh start reads from (before any segment of this run).
    pub fn start(&self) -> Position {
        Position {
            segment: lock(&self.state).next_seq,
            offset: 0,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payloads(read: &Read) -> Vec<Vec<u8>> {
        read.frames
            .iter()
            .map(|f| read.payload(f).to_vec())
            .collect()
    }

    #[test]
    fn frames_round_trip_and_damage_is_skipped() {
        let mut bytes = Vec::new();
        for (kind, payload) in [(1u8, &b"first"[..]), (2, b""), (1, &[7u8; 300][..])] {
            let mut frame = vec![0; frame_len(payload.len())];
            write_frame(&mut frame, 5, kind, payload.len(), |out| {
                out.copy_from_slice(payload)
            });
            bytes.extend_from_slice(&frame);
        }
        let frames = parse_frames(&bytes, 5);
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0].1.payload, b"first");
        assert_eq!(frames[2].0, bytes.len());
        // Frames of another segment (a recycled file's old life) do not count.
        assert!(parse_frames(&bytes, 4).is_empty());
        // A damaged checksum loses only its frame.
        let mut damaged = bytes.clone();
        damaged[frames[0].0 + 16] ^= 1;
        let left: Vec<_> = parse_frames(&damaged, 5).into_iter().map(|f| f.1).collect();
        assert_eq!(left, [frames[0].1.clone(), frames[2].1.clone()]);
        // A torn tail is ignored; zeros are skipped.
        assert_eq!(parse_frames(&bytes[..bytes.len() - 8], 5).len(), 2);
        let mut gap = vec![0u8; 64];
        gap.extend_from_slice(&bytes);
        assert_eq!(parse_frames(&gap, 5).len(), 3);
    }

    #[test]
    fn appends_survive_reopening_and_segments_roll_over() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, old) = Journal::open(dir.path(), 4096, 0).unwrap();
        assert!(old.frames.is_empty());
        // Nothing prepared yet: the frame waits in memory.
        assert!(!journal.append(1, b"early"));
        journal.prepare().unwrap();
        // Memory first, so order holds, until the indexer takes it.
        assert!(!journal.append(1, b"after"));
        let read = journal.read(journal.start()).unwrap();
        assert_eq!(payloads(&read), [b"early".to_vec(), b"after".to_vec()]);
        // Still in memory until acknowledged, and still first.
        assert!(!journal.append(1, b"later"));
        let again = journal.read(journal.start()).unwrap();
        assert_eq!(payloads(&again).len(), 3);
        journal.ack_memory(2);
        assert_eq!(
            payloads(&journal.read(journal.start()).unwrap()),
            [b"later".to_vec()]
        );
        journal.ack_memory(1);
        for i in 0..40u32 {
            journal.prepare().unwrap();
            assert!(journal.append(2, &[i as u8; 200]), "frame {i}");
        }
        let read = journal.read(Position::default()).unwrap();
        assert_eq!(read.frames.len(), 40);
        let last = read.frames.last().unwrap().at;
        // Reading again from the middle gives the rest.
        let middle = read.frames[19].at.unwrap();
        assert_eq!(journal.read(middle).unwrap().frames.len(), 20);
        drop(journal);
        let (again, old) = Journal::open(dir.path(), 4096, 0).unwrap();
        assert_eq!(old.frames.len(), 40);
        assert_eq!(old.frames.last().unwrap().at, last);
        assert_eq!(payloads(&old)[39], vec![39u8; 200]);
        assert!(again.start() > last.unwrap());
        again.discard_recovered().unwrap();
        // Files gone: numbers still start after the last committed one.
        let (fresh, old) = Journal::open(dir.path(), 4096, 77).unwrap();
        assert!(old.frames.is_empty());
        assert_eq!(fresh.start().segment, 78);
    }

    #[test]
    fn a_segment_is_not_recycled_while_a_reader_holds_its_mapping() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(dir.path(), 4096, 0).unwrap();
        let mut read_to = Position::default();
        // Fill and index segments until one waits in `free`.
        while lock(&journal.state).free.is_empty() {
            journal.prepare().unwrap();
            assert!(journal.append(2, &[7; 200]));
            if let Some(last) = journal.read(read_to).unwrap().frames.last() {
                read_to = last.at.unwrap();
            }
            journal.retire(read_to).unwrap();
        }
        // A reader is copying out of every free segment.
        let held: Vec<Arc<Mapping>> = lock(&journal.state)
            .free
            .iter()
            .map(|w| w.map.clone())
            .collect();
        let before: Vec<Vec<u8>> = held
            .iter()
            .map(|m| {
                let mut out = vec![0; m.len];
                unsafe { m.copy_out(0, &mut out) };
                out
            })
            .collect();
        for _ in 0..40 {
            journal.prepare().unwrap();
            assert!(journal.append(2, &[9; 200]));
        }
        for (map, bytes) in held.iter().zip(&before) {
            let mut now = vec![0; map.len];
            unsafe { map.copy_out(0, &mut now) };
            assert_eq!(&now, bytes, "a held segment was rewritten");
        }
        // Once let go, they are recycled again.
        let ptrs: Vec<*const Mapping> = held.iter().map(Arc::as_ptr).collect();
        drop(held);
        let reused = || {
            let state = lock(&journal.state);
            state
                .current
                .iter()
                .chain(&state.spare)
                .any(|w| ptrs.contains(&Arc::as_ptr(&w.map)))
        };
        for _ in 0..40 {
            if reused() {
                break;
            }
            journal.prepare().unwrap();
            assert!(journal.append(2, &[9; 200]));
        }
        assert!(reused(), "a free segment was never recycled");
    }

    #[test]
    fn indexed_segments_are_recycled_and_their_old_frames_never_return() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(dir.path(), 4096, 0).unwrap();
        let files = || std::fs::read_dir(dir.path()).unwrap().count();
        let mut read_to = Position::default();
        for round in 0..6u32 {
            for i in 0..30u32 {
                journal.prepare().unwrap();
                assert!(journal.append(2, &[(round * 30 + i) as u8; 200]));
            }
            let read = journal.read(read_to).unwrap();
            assert_eq!(read.frames.len(), 30, "round {round}: each frame once");
            read_to = read.frames.last().unwrap().at.unwrap();
            journal.retire(read_to).unwrap();
            // current + spare + sealed-not-yet-indexed + free, bounded.
            assert!(files() <= 3 + KEEP_FREE, "{} files", files());
        }
        drop(journal);
        // After a crash, only frames after what was indexed come back,
        // whatever the recycled files still hold.
        let (_, old) = Journal::open(dir.path(), 4096, 0).unwrap();
        let new: Vec<_> = old
            .frames
            .iter()
            .filter(|f| f.at.unwrap() > read_to)
            .collect();
        assert!(new.is_empty(), "{} stale frames came back", new.len());
    }
}
