//! An image of the whole state taken a slice at a time: [`ImageCursor`] and
//! [`StateStore::image_step`], which the checkpoints (`raft/checkpoints.rs`)
//! use to write every row without holding up the Raft thread for the whole
//! catalog, and which [`StateStore::rows`] runs in one go.
//!
//! Each table lists its rows as *parts* (`catalog.rs`: nodes, instances,
//! checks, service indexes, table indexes; `kv.rs`, `session.rs`, `events.rs`,
//! `acl.rs` theirs), each in its own key order, every row with the position
//! it stands at, so a step can stop after any row and the next one resume
//! after that position in the state as it then is. A small part may give
//! no positions: it is then written whole in one step. Owns only the walk;
//! the row keys and values are the tables' (`rows.rs`, `row_forms.rs`).

use super::StateStore;
use compact_str::CompactString as Str;
use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::ops::Bound::{Excluded, Unbounded};

/// A row of a part and where it stands: `Some((key, second key))` in a part
/// a step may stop in, `None` in one written whole; the row is `None` when
/// its value did not encode (it is left out, as from every image).
pub(super) type PartRow<'a> = (Option<(&'a str, &'a str)>, Option<(Vec<u8>, Vec<u8>)>);

/// The rows of one part after a position, in its order.
pub(super) type Part<'a> = Box<dyn Iterator<Item = PartRow<'a>> + 'a>;

/// The rows of `map` after the key `after`, each made by `row`, with the
/// map key as the position.
pub(super) fn map_part<'a, K, V>(
    map: &'a BTreeMap<K, V>,
    after: Option<(&'a str, &'a str)>,
    row: impl Fn(&'a str, &'a V) -> Option<(Vec<u8>, Vec<u8>)> + 'a,
) -> Part<'a>
where
    K: Borrow<str> + Ord,
{
    let lower = after.map_or(Unbounded, |(k, _)| Excluded(k));
    Box::new(
        map.range::<str, _>((lower, Unbounded))
            .map(move |(k, v)| (Some((k.borrow(), "")), row(k.borrow(), v))),
    )
}

/// Every row of a table's parts `0..parts` (`part(i)` from its start), in
/// their order: a table's own image.
pub(super) fn table_rows<'a>(
    parts: usize,
    part: impl Fn(usize) -> Part<'a> + 'a,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    (0..parts)
        .flat_map(part)
        .filter_map(|(_, row)| row)
        .collect()
}

/// A part written whole: `rows` without positions, none after any position.
pub(super) fn whole_part<'a>(
    after: Option<(&'a str, &'a str)>,
    rows: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)> + 'a,
) -> Part<'a> {
    if after.is_some() {
        return Box::new(std::iter::empty());
    }
    Box::new(rows.into_iter().map(|r| (None, Some(r))))
}

/// Where an image taken a step at a time stands: the part it is in and the
/// position of the last row it wrote there.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageCursor {
    part: usize,
    after: Option<(Str, Str)>,
}

impl ImageCursor {
    /// Whether every part was written.
    pub fn is_done(&self) -> bool {
        self.part >= PARTS
    }
}

/// How many parts every table has together (see [`StateStore::part`]).
const PARTS: usize =
    super::catalog::IMAGE_PARTS + super::kv::IMAGE_PARTS + super::session::IMAGE_PARTS + 2;

impl StateStore {
    /// The `i`-th part of the image, after `after`.
    fn part<'a>(&'a self, i: usize, after: Option<(&'a str, &'a str)>) -> Part<'a> {
        use super::{catalog, kv, session};
        let mut i = i;
        if i < catalog::IMAGE_PARTS {
            return self.catalog.image_part(i, after);
        }
        i -= catalog::IMAGE_PARTS;
        if i < kv::IMAGE_PARTS {
            return self.kv.image_part(i, after);
        }
        i -= kv::IMAGE_PARTS;
        if i < session::IMAGE_PARTS {
            return self.sessions.image_part(i, after);
        }
        i -= session::IMAGE_PARTS;
        match i {
            0 => whole_part(after, self.events.rows()),
            1 => whole_part(after, self.acl.rows()),
            _ => Box::new(std::iter::empty()),
        }
    }

    /// Writes the rows of the image after `cursor` to `emit`, about `budget`
    /// of them (a part written whole may take more), and moves the cursor on;
    /// true once the image is complete.
    ///
    /// A row a step writes holds the value of the moment: an image whose steps
    /// were taken while entries applied in between is the state of its last
    /// step only together with the rows those entries changed, written in
    /// order with the steps (the checkpoints do that).
    pub fn image_step(
        &self,
        cursor: &mut ImageCursor,
        budget: usize,
        emit: &mut dyn FnMut(Vec<u8>, Vec<u8>),
    ) -> bool {
        let mut written = 0usize;
        while !cursor.is_done() {
            let after = cursor.after.take();
            let mut last = None;
            let mut stopped = false;
            for (position, row) in self.part(
                cursor.part,
                after.as_ref().map(|(a, b)| (a.as_str(), b.as_str())),
            ) {
                if let Some((k, v)) = row {
                    emit(k, v);
                    written += 1;
                }
                if let Some(position) = position {
                    last = Some(position);
                    if written >= budget {
                        stopped = true;
                        break;
                    }
                }
            }
            if stopped {
                cursor.after = last.map(|(a, b)| (Str::from(a), Str::from(b)));
                return false;
            }
            cursor.part += 1;
        }
        true
    }
}
