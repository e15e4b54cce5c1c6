//! The seeded end-to-end data set: a disk image, a database directory and a
//! file tree, plus a seeded ~5% mutation of each.
//!
//! * **image** (~40%): an ext4-like raw disk image of 4 KiB blocks in
//!   128 MiB block groups. Each group starts with a superblock (backup
//!   copies in groups 0, 1 and powers of 3, 5, 7) and group descriptors,
//!   block and inode bitmaps and a 2 MiB inode table whose used inodes are
//!   256-byte ext4-like records with extent headers. File extents of
//!   64 KiB to 16 MiB of text, executable-like, random (compressed media)
//!   or sparse content fill the first 30-90% of each group's data blocks
//!   with small gaps; the rest of the group is free (zeros, left as holes
//!   in the file) but for a few small extents scattered far apart. About
//!   60% of the image is allocated.
//! * **db** (~30%): a PostgreSQL-like data directory: heap files of 8 KiB
//!   pages (page header, line pointers, tuples with a tuple header and
//!   columns: id, customer, timestamp, amount, status, description text) in
//!   1 GiB segments, a B-tree-like index file, a WAL segment and small
//!   control files.
//! * **tree** (~30%): a home/project tree: about 60% of the bytes in many
//!   small files (1-64 KiB, log-uniform, mostly text, some binary and
//!   compressed ones, 2% duplicates), 40% in four large files (a log, a
//!   compressed archive, an executable, a CSV).
//!
//! The mutation rewrites scattered extents of the image (and the inodes
//! and superblock that describe them), about 5% of the heap pages and 1%
//! of the index pages plus a quarter of the WAL, and edits, adds and
//! deletes about 5% of the small files of the tree (and appends 1% to its
//! log). Same seed, same bytes.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::content::{Class, TextGen};
use crate::rng::Rng;

/// One mebibyte.
pub const MIB: u64 = 1 << 20;
/// Image block size.
pub const BLOCK: u64 = 4096;
/// Database page size.
pub const PAGE: usize = 8192;
const GROUP_BYTES: u64 = 128 * MIB;
const INODE_SIZE: u64 = 256;
const SEGMENT_PAGES: u64 = (1 << 30) / PAGE as u64;

// Stream ids of the seeded generators (see `Rng::derive`).
const S_IMAGE_LAYOUT: u64 = 0x1000;
const S_IMAGE_META: u64 = 0x1001;
const S_IMAGE_EXTENT: u64 = 0x1_0000_0000;
const S_DB: u64 = 0x2000;
const S_TREE: u64 = 0x3000;
const S_TREE_FILE: u64 = 0x2_0000_0000;
const S_MUT_IMAGE: u64 = 0x4000;
const S_MUT_DB: u64 = 0x5000;
const S_MUT_TREE: u64 = 0x6000;
const S_MUT_CONTENT: u64 = 0x3_0000_0000;

/// Fixed "now" of the data set (2026-01-01), so that timestamps inside
/// the data do not depend on the clock.
const EPOCH: u32 = 1_767_225_600;

/// A file extent in the image.
#[derive(Debug, Clone)]
pub struct Extent {
    /// Byte offset in the image (block-aligned).
    pub offset: u64,
    /// Length in bytes (whole blocks).
    pub len: u64,
    /// Content.
    pub class: Class,
    /// Byte offset of the inode that owns the extent.
    pub inode_offset: u64,
}

/// The disk image.
#[derive(Debug, Clone)]
pub struct ImageLayout {
    /// The image file.
    pub path: PathBuf,
    /// Its length.
    pub len: u64,
    /// Allocated extents.
    pub extents: Vec<Extent>,
    /// Byte offsets of the superblock copies.
    pub superblocks: Vec<u64>,
}

/// The database directory.
#[derive(Debug, Clone)]
pub struct DbLayout {
    /// The data directory.
    pub dir: PathBuf,
    /// Heap segment files and their page counts.
    pub heap: Vec<(PathBuf, u64)>,
    /// The index file and its page count.
    pub index: (PathBuf, u64),
    /// The WAL segment and its length.
    pub wal: (PathBuf, u64),
    /// Rows in the heap.
    pub rows: u64,
}

/// A small file of the tree.
#[derive(Debug, Clone)]
pub struct TreeFile {
    /// Path relative to the tree root.
    pub rel: PathBuf,
    /// Content class.
    pub class: Class,
}

/// The file tree.
#[derive(Debug, Clone)]
pub struct TreeLayout {
    /// The tree root.
    pub dir: PathBuf,
    /// The small files (live ones).
    pub small: Vec<TreeFile>,
    /// The large files.
    pub large: Vec<(PathBuf, Class)>,
    /// Counter for names of added files.
    next_id: u64,
}

/// The whole data set.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Directory holding the three sources.
    pub root: PathBuf,
    /// The seed.
    pub seed: u64,
    /// Source `image`.
    pub image: ImageLayout,
    /// Source `db`.
    pub db: DbLayout,
    /// Source `tree`.
    pub tree: TreeLayout,
    text: TextGen,
    generation: u64,
}

/// A configured source of the agent.
#[derive(Debug, Clone)]
pub struct Source {
    /// Source name.
    pub name: &'static str,
    /// Path backed up.
    pub path: PathBuf,
    /// `image` or `tree`.
    pub kind: &'static str,
}

/// What a mutation changed.
#[derive(Debug, Clone, Default)]
pub struct Mutation {
    /// Image bytes rewritten (extent ranges; metadata not counted).
    pub image_bytes: u64,
    /// Extent ranges rewritten.
    pub image_rewrites: u64,
    /// Heap and index pages rewritten.
    pub db_pages: u64,
    /// Database bytes rewritten (pages and WAL).
    pub db_bytes: u64,
    /// Small files edited.
    pub tree_edited: u64,
    /// Small files added.
    pub tree_added: u64,
    /// Small files deleted.
    pub tree_deleted: u64,
    /// Tree bytes written (edits, additions, log append).
    pub tree_bytes: u64,
}

impl Dataset {
    /// Generates about `total` bytes under `root` (created).
    pub fn generate(root: &Path, total: u64, seed: u64) -> io::Result<Dataset> {
        fs::create_dir_all(root)?;
        let text = TextGen::new(seed);
        let image_len = (total * 4 / 10 / MIB).max(4) * MIB;
        let db_len = total * 3 / 10;
        let tree_len = total.saturating_sub(image_len + db_len).max(MIB);
        let image = gen_image(&root.join("image.img"), image_len, seed, &text)?;
        let db = gen_db(&root.join("db"), db_len, seed, &text)?;
        let tree = gen_tree(&root.join("tree"), tree_len, seed, &text)?;
        Ok(Dataset {
            root: root.to_path_buf(),
            seed,
            image,
            db,
            tree,
            text,
            generation: 0,
        })
    }

    /// The three sources, in backup order.
    pub fn sources(&self) -> Vec<Source> {
        vec![
            Source {
                name: "image",
                path: self.image.path.clone(),
                kind: "image",
            },
            Source {
                name: "db",
                path: self.db.dir.clone(),
                kind: "tree",
            },
            Source {
                name: "tree",
                path: self.tree.dir.clone(),
                kind: "tree",
            },
        ]
    }

    /// Applies the next seeded ~5% mutation.
    pub fn mutate(&mut self) -> io::Result<Mutation> {
        self.generation += 1;
        let g = self.generation;
        let mut m = Mutation::default();
        mutate_image(&mut self.image, self.seed, g, &self.text, &mut m)?;
        mutate_db(&self.db, self.seed, g, &self.text, &mut m)?;
        mutate_tree(&mut self.tree, self.seed, g, &self.text, &mut m)?;
        Ok(m)
    }
}

fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
fn get_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Writes `len` bytes of `class` at `offset`, in 1 MiB pieces.
fn write_content(
    f: &File,
    offset: u64,
    len: u64,
    class: Class,
    rng: &mut Rng,
    text: &TextGen,
    buf: &mut [u8],
) -> io::Result<()> {
    let mut done = 0;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        text.fill_class(class, rng, &mut buf[..n]);
        f.write_all_at(&buf[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

// ---------------------------------------------------------------- image

fn has_super_backup(g: u64) -> bool {
    if g <= 1 {
        return true;
    }
    [3u64, 5, 7].iter().any(|&b| {
        let mut p = b;
        while p < g {
            p *= b;
        }
        p == g
    })
}

fn pick_extent_class(rng: &mut Rng) -> Class {
    match rng.below(100) {
        0..=24 => Class::Text,
        25..=54 => Class::Binary,
        55..=84 => Class::Random,
        _ => Class::Sparse,
    }
}

fn set_bits(bitmap: &mut [u8], from: u64, n: u64) {
    for b in from..from + n {
        let (i, bit) = ((b / 8) as usize, b % 8);
        if i < bitmap.len() {
            bitmap[i] |= 1 << bit;
        }
    }
}

fn superblock(
    rng: &mut Rng,
    uuid: &[u8; 16],
    len: u64,
    inodes_per_group: u32,
    group: u64,
    used_blocks: u64,
) -> Vec<u8> {
    let blocks = len / BLOCK;
    let groups = len.div_ceil(GROUP_BYTES);
    let mut s = vec![0u8; 1024];
    put_u32(&mut s, 0, inodes_per_group * groups as u32);
    put_u32(&mut s, 4, blocks as u32);
    put_u32(&mut s, 8, (blocks / 20) as u32);
    put_u32(&mut s, 12, blocks.saturating_sub(used_blocks) as u32);
    put_u32(&mut s, 16, inodes_per_group * groups as u32 / 2);
    put_u32(&mut s, 24, 2); // log block size: 4 KiB
    put_u32(&mut s, 28, 2);
    put_u32(&mut s, 32, (GROUP_BYTES / BLOCK) as u32);
    put_u32(&mut s, 36, (GROUP_BYTES / BLOCK) as u32);
    put_u32(&mut s, 40, inodes_per_group);
    put_u32(&mut s, 44, EPOCH - 3600);
    put_u32(&mut s, 48, EPOCH);
    put_u16(&mut s, 52, 17);
    put_u16(&mut s, 54, 0xFFFF);
    put_u16(&mut s, 56, 0xEF53);
    put_u16(&mut s, 58, 1);
    put_u16(&mut s, 60, 1);
    put_u32(&mut s, 64, EPOCH - 86_400 * 30);
    put_u32(&mut s, 76, 1);
    put_u32(&mut s, 84, 11);
    put_u16(&mut s, 88, INODE_SIZE as u16);
    put_u16(&mut s, 90, group as u16);
    put_u32(&mut s, 92, 0x3C);
    put_u32(&mut s, 96, 0x2C2);
    put_u32(&mut s, 100, 0x46B);
    s[104..120].copy_from_slice(uuid);
    s[120..132].copy_from_slice(b"refuge-bench");
    s[136..137].copy_from_slice(b"/");
    // Hash seed, journal UUID and the checksum: noise.
    rng.fill(&mut s[236..252]);
    rng.fill(&mut s[0x3FC..0x400]);
    s
}

fn inode_record(rec: &mut [u8], ext: Option<&Extent>, rng: &mut Rng) {
    let mtime = EPOCH - rng.below(86_400 * 365) as u32;
    let (mode, size, start, blocks) = match ext {
        Some(e) => (0o100_644u16, e.len, e.offset / BLOCK, e.len / BLOCK),
        None => (0o040_755u16, BLOCK, 0, 1),
    };
    put_u16(rec, 0, mode);
    put_u16(rec, 2, 1000);
    put_u32(rec, 4, size as u32);
    put_u32(rec, 8, mtime + 60);
    put_u32(rec, 12, mtime);
    put_u32(rec, 16, mtime);
    put_u16(rec, 24, 1000);
    put_u16(rec, 26, if ext.is_some() { 1 } else { 2 });
    put_u32(rec, 28, (blocks * 8) as u32);
    put_u32(rec, 32, 0x80000); // extents
    // Extent header and one leaf extent in i_block.
    put_u16(rec, 40, 0xF30A);
    put_u16(rec, 42, 1);
    put_u16(rec, 44, 4);
    put_u16(rec, 46, 0);
    put_u32(rec, 52, 0);
    put_u16(rec, 56, blocks.min(32_768) as u16);
    put_u16(rec, 58, (start >> 32) as u16);
    put_u32(rec, 60, start as u32);
    put_u32(rec, 100, rng.next_u64() as u32); // generation
    put_u32(rec, 108, (size >> 32) as u32);
    put_u16(rec, 128, 32);
    put_u16(rec, 130, rng.next_u64() as u16); // checksum hi
    put_u32(rec, 132, rng.next_u64() as u32 & 0xFFFF_FFFC); // ctime extra
    put_u32(rec, 136, rng.next_u64() as u32 & 0xFFFF_FFFC); // mtime extra
    put_u32(rec, 144, mtime - 86_400);
}

fn gen_image(path: &Path, len: u64, seed: u64, text: &TextGen) -> io::Result<ImageLayout> {
    let f = File::create(path)?;
    f.set_len(len)?;
    let mut rng = Rng::derive(seed, S_IMAGE_LAYOUT);
    let mut meta_rng = Rng::derive(seed, S_IMAGE_META);
    let groups = len.div_ceil(GROUP_BYTES);
    let gdt_blocks = (groups * 64).div_ceil(BLOCK);
    let mut uuid = [0u8; 16];
    meta_rng.fill(&mut uuid);
    let mut extents = Vec::new();
    let mut superblocks = Vec::new();
    let mut gdt = vec![0u8; (gdt_blocks * BLOCK) as usize];
    let mut total_used = 0;
    struct GroupMeta {
        start: u64,
        block_bitmap: Vec<u8>,
        itable: u64,
        inodes: Vec<u8>,
        inodes_per_group: u64,
        bitmap_at: u64,
    }
    let mut metas = Vec::new();
    for g in 0..groups {
        let start = g * GROUP_BYTES;
        let end = (start + GROUP_BYTES).min(len);
        let group_blocks = (end - start) / BLOCK;
        let itable_len = ((end - start) / 64).clamp(16 * BLOCK, 2 * MIB) / BLOCK * BLOCK;
        let inodes_per_group = itable_len / INODE_SIZE;
        let mut cursor = start;
        if has_super_backup(g) {
            superblocks.push(if g == 0 { 1024 } else { start });
            cursor += (1 + gdt_blocks) * BLOCK;
        }
        let bitmap_at = cursor;
        let itable = cursor + 2 * BLOCK;
        let data_start = itable + itable_len;
        let mut block_bitmap = vec![0u8; (group_blocks.div_ceil(8)) as usize];
        set_bits(&mut block_bitmap, 0, (data_start - start) / BLOCK);
        let first = extents.len();
        let mut ino = if g == 0 { 11 } else { 0 };
        // The first 30-90% of the data blocks hold extents with small gaps
        // (deleted files); the rest is free space with a few small
        // extents scattered far apart.
        let fill = 0.3 + 0.6 * rng.unit();
        let dense_end = data_start + ((end - data_start) as f64 * fill) as u64 / BLOCK * BLOCK;
        let mut pos = data_start;
        while pos < end && ino + 1 < inodes_per_group {
            let dense = pos < dense_end;
            pos += if dense {
                rng.below(64)
            } else {
                rng.range(1024, 8192)
            } * BLOCK;
            if pos + 16 * BLOCK > end {
                break;
            }
            let max = if dense { 4096 } else { 256 };
            let n = rng.log_uniform(16, max).min((end - pos) / BLOCK);
            set_bits(&mut block_bitmap, (pos - start) / BLOCK, n);
            extents.push(Extent {
                offset: pos,
                len: n * BLOCK,
                class: pick_extent_class(&mut rng),
                inode_offset: itable + ino * INODE_SIZE,
            });
            ino += 1;
            pos += n * BLOCK;
        }
        // Inode table: file inodes, then a few directories.
        let dirs = ((extents.len() - first) as u64 / 20 + 1).min(inodes_per_group - ino);
        let used_inodes = ino + dirs;
        let mut inodes =
            vec![0u8; (used_inodes * INODE_SIZE).div_ceil(BLOCK) as usize * BLOCK as usize];
        for e in &extents[first..] {
            let at = (e.inode_offset - itable) as usize;
            inode_record(
                &mut inodes[at..at + INODE_SIZE as usize],
                Some(e),
                &mut meta_rng,
            );
        }
        for d in ino..used_inodes {
            let at = (d * INODE_SIZE) as usize;
            inode_record(
                &mut inodes[at..at + INODE_SIZE as usize],
                None,
                &mut meta_rng,
            );
        }
        let used_blocks: u64 = block_bitmap.iter().map(|b| u64::from(b.count_ones())).sum();
        total_used += used_blocks;
        let d = &mut gdt[(g * 64) as usize..(g * 64 + 64) as usize];
        put_u32(d, 0, (bitmap_at / BLOCK) as u32);
        put_u32(d, 4, (bitmap_at / BLOCK + 1) as u32);
        put_u32(d, 8, (itable / BLOCK) as u32);
        put_u16(d, 12, (group_blocks - used_blocks) as u16);
        put_u16(d, 14, (inodes_per_group - used_inodes) as u16);
        put_u16(d, 16, dirs as u16);
        put_u16(d, 18, 0x4);
        put_u16(d, 28, (inodes_per_group - used_inodes) as u16);
        put_u16(d, 30, meta_rng.next_u64() as u16);
        // Inode bitmap written with the block bitmap.
        let mut inode_bitmap = vec![0u8; BLOCK as usize];
        set_bits(&mut inode_bitmap, 0, used_inodes);
        let mut bitmaps = block_bitmap;
        bitmaps.resize(BLOCK as usize, 0xFF);
        bitmaps.extend_from_slice(&inode_bitmap);
        metas.push(GroupMeta {
            start,
            block_bitmap: bitmaps,
            itable,
            inodes,
            inodes_per_group,
            bitmap_at,
        });
    }
    // Extent contents.
    let mut buf = vec![0u8; MIB as usize];
    for (i, e) in extents.iter().enumerate() {
        let mut r = Rng::derive(seed, S_IMAGE_EXTENT + i as u64);
        write_content(&f, e.offset, e.len, e.class, &mut r, text, &mut buf)?;
    }
    // Metadata.
    for (g, m) in metas.iter().enumerate() {
        let g = g as u64;
        if has_super_backup(g) {
            let sb = superblock(
                &mut meta_rng,
                &uuid,
                len,
                m.inodes_per_group as u32,
                g,
                total_used,
            );
            let at = if g == 0 { 1024 } else { m.start };
            f.write_all_at(&sb, at)?;
            let gdt_at = if g == 0 { BLOCK } else { m.start + BLOCK };
            f.write_all_at(&gdt, gdt_at)?;
        }
        f.write_all_at(&m.block_bitmap, m.bitmap_at)?;
        f.write_all_at(&m.inodes, m.itable)?;
    }
    f.sync_all()?;
    Ok(ImageLayout {
        path: path.to_path_buf(),
        len,
        extents,
        superblocks,
    })
}

fn mutate_image(
    img: &mut ImageLayout,
    seed: u64,
    generation: u64,
    text: &TextGen,
    m: &mut Mutation,
) -> io::Result<()> {
    if img.extents.is_empty() {
        return Ok(());
    }
    let f = OpenOptions::new().read(true).write(true).open(&img.path)?;
    let mut rng = Rng::derive(seed, S_MUT_IMAGE + generation);
    let target = img.len / 20;
    let mut buf = vec![0u8; MIB as usize];
    let mut touched_inodes = HashSet::new();
    let now = EPOCH + generation as u32 * 86_400;
    while m.image_bytes < target {
        let e = &img.extents[rng.below(img.extents.len() as u64) as usize];
        let blocks = e.len / BLOCK;
        let n = rng.log_uniform(1, 256).min(blocks);
        let start = rng.below(blocks - n + 1);
        let mut r = Rng::derive(seed, S_MUT_CONTENT + (generation << 24) + m.image_rewrites);
        write_content(
            &f,
            e.offset + start * BLOCK,
            n * BLOCK,
            e.class,
            &mut r,
            text,
            &mut buf,
        )?;
        m.image_bytes += n * BLOCK;
        m.image_rewrites += 1;
        touched_inodes.insert(e.inode_offset);
    }
    // The inodes of the rewritten files get new ctime/mtime, the
    // superblocks a new write time and free count.
    for ino in touched_inodes {
        let mut t = [0u8; 4];
        put_u32(&mut t, 0, now + rng.below(86_400) as u32);
        f.write_all_at(&t, ino + 12)?;
        f.write_all_at(&t, ino + 16)?;
    }
    for &sb in &img.superblocks {
        let mut b = [0u8; 4];
        put_u32(&mut b, 0, now);
        f.write_all_at(&b, sb + 48)?;
        put_u32(&mut b, 0, rng.next_u64() as u32);
        f.write_all_at(&b, sb + 0x3FC)?;
    }
    f.sync_all()
}

// ---------------------------------------------------------------- database

const STATUS: [&[u8]; 5] = [b"new", b"paid", b"shipped", b"cancelled", b"refunded"];
/// Offsets of columns inside a tuple (after the 24-byte tuple header).
const T_ID: usize = 24;
const T_TS: usize = 36;
const T_AMOUNT: usize = 44;

fn page_header(p: &mut [u8], lsn: u64, rng: &mut Rng, lower: u16, upper: u16, special: u16) {
    put_u64(p, 0, lsn);
    put_u16(p, 8, rng.next_u64() as u16);
    put_u16(p, 10, 0x4);
    put_u16(p, 12, lower);
    put_u16(p, 14, upper);
    put_u16(p, 16, special);
    put_u16(p, 18, 0x2004);
    put_u32(p, 20, 0);
}

/// Fills a heap page; returns the number of rows.
fn heap_page(p: &mut [u8], page_no: u64, row_id: &mut u64, rng: &mut Rng, text: &TextGen) -> u64 {
    p.fill(0);
    let fill = PAGE * rng.range(70, 99) as usize / 100;
    let mut lp = 24usize;
    let mut upper = PAGE;
    let mut rows = 0u64;
    loop {
        let desc = rng.log_uniform(16, 200) as usize;
        let status = STATUS[rng.below(STATUS.len() as u64) as usize];
        let len = (T_AMOUNT + 4 + 1 + status.len() + 2 + desc).next_multiple_of(8);
        if (PAGE - upper) + len + (lp + 4) > fill || upper < len + lp + 4 {
            break;
        }
        upper -= len;
        let t = &mut p[upper..upper + len];
        let id = *row_id;
        put_u32(t, 0, 1_000_000 + (id / 40) as u32); // xmin
        put_u32(t, 8, 0);
        put_u32(t, 12, page_no as u32); // ctid
        put_u16(t, 16, rows as u16 + 1);
        put_u16(t, 18, 8);
        put_u16(t, 20, 0x0902);
        t[22] = 24;
        put_u64(t, T_ID, id);
        put_u32(t, 32, rng.below(20_000) as u32);
        put_u64(
            t,
            T_TS,
            1_700_000_000_000_000 + id * 1_000_000 + rng.below(1_000_000),
        );
        put_u32(t, T_AMOUNT, rng.below(1_000_000) as u32);
        let mut at = T_AMOUNT + 4;
        t[at] = status.len() as u8;
        at += 1;
        t[at..at + status.len()].copy_from_slice(status);
        at += status.len();
        put_u16(t, at, desc as u16);
        at += 2;
        text.fill(rng, &mut t[at..at + desc]);
        let item = (upper as u32 & 0x7FFF) | (1 << 15) | ((len as u32 & 0x7FFF) << 17);
        put_u32(p, lp, item);
        lp += 4;
        rows += 1;
        *row_id += 1;
    }
    let lsn = 0x1_0000_0000 + page_no * 977;
    page_header(p, lsn, rng, lp as u16, upper as u16, PAGE as u16);
    rows
}

/// Fills a B-tree leaf page of (key, ctid) items.
fn index_page(p: &mut [u8], page_no: u64, key: &mut u64, rng: &mut Rng) {
    p.fill(0);
    let special = PAGE - 16;
    put_u32(p, special, page_no.saturating_sub(1) as u32);
    put_u32(p, special + 4, page_no as u32 + 1);
    put_u16(p, special + 12, 0x1);
    let mut lp = 24usize;
    let mut upper = special;
    let fill = special * 9 / 10;
    while (special - upper) + 16 + lp + 4 <= fill {
        upper -= 16;
        *key += 1 + rng.below(3);
        put_u64(p, upper, *key);
        put_u32(p, upper + 8, (*key / 60) as u32);
        put_u16(p, upper + 12, (*key % 60) as u16 + 1);
        let item = (upper as u32 & 0x7FFF) | (1 << 15) | (16 << 17);
        put_u32(p, lp, item);
        lp += 4;
    }
    page_header(
        p,
        0x1_0000_0000 + page_no * 331,
        rng,
        lp as u16,
        upper as u16,
        special as u16,
    );
}

fn write_file(path: &Path, data: &[u8]) -> io::Result<()> {
    if let Some(d) = path.parent() {
        fs::create_dir_all(d)?;
    }
    fs::write(path, data)
}

fn gen_db(dir: &Path, len: u64, seed: u64, text: &TextGen) -> io::Result<DbLayout> {
    let mut rng = Rng::derive(seed, S_DB);
    let base = dir.join("base").join("16384");
    fs::create_dir_all(&base)?;
    // Small files.
    write_file(&dir.join("PG_VERSION"), b"16\n")?;
    let mut conf = vec![0u8; 24 * 1024];
    text.fill(&mut rng, &mut conf);
    write_file(&dir.join("postgresql.conf"), &conf)?;
    let mut control = vec![0u8; PAGE];
    rng.fill(&mut control[..296]);
    write_file(&dir.join("global").join("pg_control"), &control)?;
    let mut init = vec![0u8; 100 * 1024];
    text.fill_binary(&mut rng, &mut init);
    write_file(&base.join("pg_internal.init"), &init)?;
    let small = (3 + conf.len() + control.len() + init.len()) as u64;
    // WAL segment.
    let wal_len = (len / 32).clamp(MIB, 16 * MIB) / PAGE as u64 * PAGE as u64;
    let wal_path = dir.join("pg_wal").join("000000010000000000000001");
    let mut wal = vec![0u8; wal_len as usize];
    text.fill_mixed(&mut rng, &mut wal, 0.5);
    write_file(&wal_path, &wal)?;
    drop(wal);
    // Heap and index.
    let pages = len.saturating_sub(small + wal_len) / PAGE as u64;
    let index_pages = (pages / 10).max(1);
    let heap_pages = pages.saturating_sub(index_pages).max(1);
    let mut heap = Vec::new();
    let mut page = vec![0u8; PAGE];
    let mut row_id = 1u64;
    let mut done = 0u64;
    let mut seg = 0u64;
    while done < heap_pages {
        let n = (heap_pages - done).min(SEGMENT_PAGES);
        let path = if seg == 0 {
            base.join("16385")
        } else {
            base.join(format!("16385.{seg}"))
        };
        let mut w = BufWriter::with_capacity(MIB as usize, File::create(&path)?);
        for i in 0..n {
            heap_page(&mut page, done + i, &mut row_id, &mut rng, text);
            w.write_all(&page)?;
        }
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        heap.push((path, n));
        done += n;
        seg += 1;
    }
    let index_path = base.join("16390");
    let mut w = BufWriter::with_capacity(MIB as usize, File::create(&index_path)?);
    let mut key = 0u64;
    for i in 0..index_pages {
        index_page(&mut page, i, &mut key, &mut rng);
        w.write_all(&page)?;
    }
    w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(DbLayout {
        dir: dir.to_path_buf(),
        heap,
        index: (index_path, index_pages),
        wal: (wal_path, wal_len),
        rows: row_id - 1,
    })
}

fn mutate_db(
    db: &DbLayout,
    seed: u64,
    generation: u64,
    text: &TextGen,
    m: &mut Mutation,
) -> io::Result<()> {
    let mut rng = Rng::derive(seed, S_MUT_DB + generation);
    let mut page = vec![0u8; PAGE];
    let xid = 5_000_000 + generation as u32 * 100_000;
    let lsn = 0x2_0000_0000 * (generation + 1);
    // Heap: about 5% of the pages, uniformly scattered; a third of the rows
    // of each get a new xmin, timestamp and amount.
    for (path, pages) in &db.heap {
        let f = OpenOptions::new().read(true).write(true).open(path)?;
        for p in 0..*pages {
            if !rng.chance(0.05) {
                continue;
            }
            let at = p * PAGE as u64;
            f.read_exact_at(&mut page, at)?;
            let lower = get_u16(&page, 12) as usize;
            for lp in (24..lower).step_by(4) {
                if !rng.chance(1.0 / 3.0) {
                    continue;
                }
                let off = (get_u32(&page, lp) & 0x7FFF) as usize;
                if off + T_AMOUNT + 4 > PAGE {
                    continue;
                }
                put_u32(&mut page, off, xid + rng.below(1000) as u32);
                let id = u64::from_le_bytes(
                    page[off + T_ID..off + T_ID + 8]
                        .try_into()
                        .unwrap_or([0; 8]),
                );
                put_u64(
                    &mut page,
                    off + T_TS,
                    1_800_000_000_000_000 + id + generation * 86_400_000_000,
                );
                put_u32(&mut page, off + T_AMOUNT, rng.below(1_000_000) as u32);
            }
            put_u64(&mut page, 0, lsn + p);
            put_u16(&mut page, 8, rng.next_u64() as u16);
            f.write_all_at(&page, at)?;
            m.db_pages += 1;
            m.db_bytes += PAGE as u64;
        }
        f.sync_all()?;
    }
    // Index: 1% of the pages get some items pointing elsewhere.
    let (path, pages) = &db.index;
    let f = OpenOptions::new().read(true).write(true).open(path)?;
    for p in 0..*pages {
        if !rng.chance(0.01) {
            continue;
        }
        let at = p * PAGE as u64;
        f.read_exact_at(&mut page, at)?;
        let lower = get_u16(&page, 12) as usize;
        for lp in (24..lower).step_by(4) {
            if rng.chance(0.1) {
                let off = (get_u32(&page, lp) & 0x7FFF) as usize;
                if off + 14 <= PAGE {
                    put_u32(&mut page, off + 8, rng.below(1 << 24) as u32);
                }
            }
        }
        put_u64(&mut page, 0, lsn + p);
        f.write_all_at(&page, at)?;
        m.db_pages += 1;
        m.db_bytes += PAGE as u64;
    }
    f.sync_all()?;
    // WAL: a quarter of the segment is rewritten.
    let (path, len) = &db.wal;
    let part = (len / 4) / PAGE as u64 * PAGE as u64;
    if part > 0 {
        let start = rng.below(len / PAGE as u64 - part / PAGE as u64 + 1) * PAGE as u64;
        let mut buf = vec![0u8; part as usize];
        text.fill_mixed(&mut rng, &mut buf, 0.5);
        let f = OpenOptions::new().write(true).open(path)?;
        f.write_all_at(&buf, start)?;
        f.sync_all()?;
        m.db_bytes += part;
    }
    Ok(())
}

// ---------------------------------------------------------------- tree

fn small_class(rng: &mut Rng) -> (Class, &'static str) {
    const TEXT: [&str; 5] = ["txt", "md", "rs", "conf", "log"];
    const BIN: [&str; 3] = ["so", "bin", "pyc"];
    const RAND: [&str; 3] = ["png", "jpg", "gz"];
    match rng.below(10) {
        0..=6 => (Class::Text, TEXT[rng.below(5) as usize]),
        7 | 8 => (Class::Binary, BIN[rng.below(3) as usize]),
        _ => (Class::Random, RAND[rng.below(3) as usize]),
    }
}

fn small_path(i: u64, ext: &str) -> PathBuf {
    let leaf = i / 48;
    PathBuf::from(format!(
        "proj{:03}/mod{:02}/f{i:06}.{ext}",
        leaf / 16,
        leaf % 16
    ))
}

fn gen_tree(dir: &Path, len: u64, seed: u64, text: &TextGen) -> io::Result<TreeLayout> {
    fs::create_dir_all(dir)?;
    let mut rng = Rng::derive(seed, S_TREE);
    let large_total = len * 4 / 10;
    let large_spec: [(&str, Class, u64); 4] = [
        ("var/log/app.log", Class::Text, 35),
        ("srv/backups/archive.tar.zst", Class::Random, 30),
        ("opt/app/bin/server", Class::Binary, 20),
        ("home/ana/data/measurements.csv", Class::Text, 15),
    ];
    let mut buf = vec![0u8; MIB as usize];
    let mut large = Vec::new();
    for (i, (rel, class, pct)) in large_spec.iter().enumerate() {
        let path = dir.join(rel);
        if let Some(d) = path.parent() {
            fs::create_dir_all(d)?;
        }
        let f = File::create(&path)?;
        let n = large_total * pct / 100;
        let mut r = Rng::derive(seed, S_TREE_FILE + (1 << 31) + i as u64);
        write_content(&f, 0, n, *class, &mut r, text, &mut buf)?;
        large.push((PathBuf::from(rel), *class));
    }
    let small_total = len - large_total;
    let mut written = 0u64;
    let mut small: Vec<TreeFile> = Vec::new();
    let mut content = Vec::new();
    let mut i = 0u64;
    while written < small_total {
        let size = rng
            .log_uniform(1024, 65536)
            .min(small_total - written)
            .max(1) as usize;
        let (class, ext) = small_class(&mut rng);
        let rel = small_path(i, ext);
        let path = dir.join(&rel);
        if i.is_multiple_of(48) {
            fs::create_dir_all(path.parent().unwrap_or(dir))?;
        }
        if !small.is_empty() && rng.chance(0.02) {
            // A copy of an earlier file.
            let src = &small[rng.below(small.len() as u64) as usize];
            content = fs::read(dir.join(&src.rel))?;
            fs::write(&path, &content)?;
            written += content.len() as u64;
            small.push(TreeFile {
                rel,
                class: src.class,
            });
        } else {
            content.resize(size, 0);
            let mut r = Rng::derive(seed, S_TREE_FILE + i);
            text.fill_class(class, &mut r, &mut content);
            fs::write(&path, &content)?;
            written += size as u64;
            small.push(TreeFile { rel, class });
        }
        i += 1;
    }
    Ok(TreeLayout {
        dir: dir.to_path_buf(),
        small,
        large,
        next_id: i,
    })
}

fn mutate_tree(
    tree: &mut TreeLayout,
    seed: u64,
    generation: u64,
    text: &TextGen,
    m: &mut Mutation,
) -> io::Result<()> {
    let mut rng = Rng::derive(seed, S_MUT_TREE + generation);
    let n = tree.small.len() as u64;
    let mut content = Vec::new();
    let mut keep = Vec::with_capacity(tree.small.len());
    let mut stream = S_MUT_CONTENT + (generation << 24) + (1 << 23);
    for f in std::mem::take(&mut tree.small) {
        let path = tree.dir.join(&f.rel);
        let roll = rng.below(1000);
        if roll < 10 {
            fs::remove_file(&path)?;
            m.tree_deleted += 1;
            continue;
        }
        if roll < 35 {
            let mut data = fs::read(&path)?;
            stream += 1;
            let mut r = Rng::derive(seed, stream);
            if rng.chance(0.5) || data.is_empty() {
                let add = r.log_uniform(64, 4096) as usize;
                let old = data.len();
                data.resize(old + add, 0);
                text.fill(&mut r, &mut data[old..]);
                m.tree_bytes += add as u64;
            } else {
                let len = r.range(1, (data.len() as u64 / 2).max(2)) as usize;
                let at = r.below((data.len() - len) as u64 + 1) as usize;
                text.fill_class(f.class, &mut r, &mut data[at..at + len]);
                m.tree_bytes += len as u64;
            }
            fs::write(&path, &data)?;
            m.tree_edited += 1;
        }
        keep.push(f);
    }
    tree.small = keep;
    // New files: half next to existing ones, half in a new directory.
    let adds = (n * 15).div_ceil(1000);
    for k in 0..adds {
        let (class, ext) = small_class(&mut rng);
        let id = tree.next_id;
        tree.next_id += 1;
        let rel = if k % 2 == 0 && !tree.small.is_empty() {
            let near = &tree.small[rng.below(tree.small.len() as u64) as usize].rel;
            near.with_file_name(format!("n{id:06}.{ext}"))
        } else {
            PathBuf::from(format!("new{generation}/batch{:02}/n{id:06}.{ext}", k / 64))
        };
        let path = tree.dir.join(&rel);
        if let Some(d) = path.parent() {
            fs::create_dir_all(d)?;
        }
        let size = rng.log_uniform(1024, 65536) as usize;
        content.resize(size, 0);
        stream += 1;
        let mut r = Rng::derive(seed, stream);
        text.fill_class(class, &mut r, &mut content);
        fs::write(&path, &content)?;
        m.tree_bytes += size as u64;
        m.tree_added += 1;
        tree.small.push(TreeFile { rel, class });
    }
    // The log grows by 1%.
    if let Some((rel, _)) = tree.large.first() {
        let path = tree.dir.join(rel);
        let len = fs::metadata(&path)?.len();
        let add = (len / 100) as usize;
        let mut data = vec![0u8; add];
        stream += 1;
        text.fill(&mut Rng::derive(seed, stream), &mut data);
        let mut f = OpenOptions::new().append(true).open(&path)?;
        f.write_all(&data)?;
        m.tree_bytes += add as u64;
    }
    Ok(())
}

// ---------------------------------------------------------------- digests

/// One entry of a [`Digest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryDigest {
    /// Path relative to the root (empty for a single file).
    pub path: Vec<u8>,
    /// `d`, `f` or `l`.
    pub kind: u8,
    /// Bytes (files) or target length (symlinks).
    pub size: u64,
    /// BLAKE3 of the content (files) or target (symlinks); zeros for
    /// directories.
    pub hash: [u8; 32],
}

/// Digest and size of a tree or file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    /// BLAKE3 over every entry, in path order.
    pub hash: blake3::Hash,
    /// Regular files.
    pub files: u64,
    /// Directories (not counting the root).
    pub dirs: u64,
    /// Bytes in regular files.
    pub bytes: u64,
    /// The entries, in path order.
    pub entries: Vec<EntryDigest>,
}

impl Digest {
    /// Entries that differ between `self` (expected) and `got`, as
    /// readable lines (at most `max`), and their total count.
    pub fn differences(&self, got: &Digest, max: usize) -> (Vec<String>, usize) {
        use std::collections::BTreeMap;
        let index = |d: &Digest| -> BTreeMap<Vec<u8>, EntryDigest> {
            d.entries
                .iter()
                .map(|e| (e.path.clone(), e.clone()))
                .collect()
        };
        let (want, have) = (index(self), index(got));
        let mut lines = Vec::new();
        let mut count = 0;
        let name = |p: &[u8]| {
            if p.is_empty() {
                "(the file)".to_string()
            } else {
                String::from_utf8_lossy(p).into_owned()
            }
        };
        for (p, w) in &want {
            let line = match have.get(p) {
                None => Some(format!("{} missing", name(p))),
                Some(h) if h != w => Some(format!(
                    "{}: {} bytes restored, {} expected{}",
                    name(p),
                    h.size,
                    w.size,
                    if h.size == w.size {
                        " (content differs)"
                    } else {
                        ""
                    }
                )),
                _ => None,
            };
            if let Some(l) = line {
                count += 1;
                if lines.len() < max {
                    lines.push(l);
                }
            }
        }
        for p in have.keys().filter(|p| !want.contains_key(*p)) {
            count += 1;
            if lines.len() < max {
                lines.push(format!("{} unexpected", name(p)));
            }
        }
        (lines, count)
    }
}

/// Streams a file through BLAKE3.
pub fn file_hash(path: &Path) -> io::Result<(blake3::Hash, u64)> {
    let mut f = File::open(path)?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; MIB as usize];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((h.finalize(), n))
}

/// Digest of a regular file or of a directory tree (regular files,
/// directories and symlinks; names compared as bytes).
pub fn digest(path: &Path) -> io::Result<Digest> {
    let md = fs::symlink_metadata(path)?;
    let mut d = Digest {
        hash: blake3::Hash::from_bytes([0; 32]),
        files: 0,
        dirs: 0,
        bytes: 0,
        entries: Vec::new(),
    };
    if md.is_file() {
        let (hash, bytes) = file_hash(path)?;
        d.entries.push(EntryDigest {
            path: Vec::new(),
            kind: b'f',
            size: bytes,
            hash: *hash.as_bytes(),
        });
        d.hash = hash;
        d.files = 1;
        d.bytes = bytes;
        return Ok(d);
    }
    walk(path, Path::new(""), &mut d)?;
    let mut h = blake3::Hasher::new();
    for e in &d.entries {
        h.update(&e.path);
        h.update(&[0, e.kind]);
        h.update(&e.size.to_le_bytes());
        h.update(&e.hash);
    }
    d.hash = h.finalize();
    Ok(d)
}

fn walk(root: &Path, rel: &Path, d: &mut Digest) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let mut names: Vec<_> = fs::read_dir(root.join(rel))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()?;
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    for name in names {
        let r = rel.join(&name);
        let p = root.join(&r);
        let md = fs::symlink_metadata(&p)?;
        let path = r.as_os_str().as_bytes().to_vec();
        if md.is_dir() {
            d.dirs += 1;
            d.entries.push(EntryDigest {
                path,
                kind: b'd',
                size: 0,
                hash: [0; 32],
            });
            walk(root, &r, d)?;
        } else if md.is_file() {
            let (fh, n) = file_hash(&p)?;
            d.files += 1;
            d.bytes += n;
            d.entries.push(EntryDigest {
                path,
                kind: b'f',
                size: n,
                hash: *fh.as_bytes(),
            });
        } else if md.file_type().is_symlink() {
            let t = fs::read_link(&p)?;
            let t = t.as_os_str().as_bytes();
            d.entries.push(EntryDigest {
                path,
                kind: b'l',
                size: t.len() as u64,
                hash: *blake3::hash(t).as_bytes(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_dataset_is_deterministic_and_mutation_is_about_five_percent() {
        let a = tempfile::tempdir().expect("tempdir");
        let b = tempfile::tempdir().expect("tempdir");
        let total = 24 * MIB;
        let mut da = Dataset::generate(a.path(), total, 42).expect("generate");
        let db = Dataset::generate(b.path(), total, 42).expect("generate");
        let sum = |ds: &Dataset| -> Vec<Digest> {
            ds.sources()
                .iter()
                .map(|s| digest(&s.path).expect("digest"))
                .collect()
        };
        let before = sum(&da);
        assert_eq!(before, sum(&db), "same seed, same data");
        let bytes: u64 = before.iter().map(|d| d.bytes).sum();
        assert!(
            bytes > total * 9 / 10 && bytes < total * 11 / 10,
            "{bytes} bytes for {total}"
        );
        assert!(!da.image.extents.is_empty());
        assert!(da.db.rows > 1000);
        assert!(da.tree.small.len() > 100);

        let m = da.mutate().expect("mutate");
        let after = sum(&da);
        for (x, y) in before.iter().zip(&after) {
            assert_ne!(x.hash, y.hash, "every source changes");
        }
        assert!(m.image_bytes >= da.image.len / 20, "{m:?}");
        assert!(
            m.db_pages > 0 && m.tree_edited > 0 && m.tree_added > 0,
            "{m:?}"
        );
        let changed = m.image_bytes + m.db_bytes + m.tree_bytes;
        assert!(
            changed > bytes / 50 && changed < bytes / 8,
            "{changed} of {bytes} bytes changed: {m:?}"
        );
    }
}
