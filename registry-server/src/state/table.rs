//! The catalog's containers: [`NodeTable`], its rows keyed by (node, id)
//! (service instances and checks) grouped by node, and [`SmallMap`], a map that
//! is a sorted `Vec` while small. Owns only the containers; what the rows mean
//! is `catalog.rs`'s.
//!
//! Why not one `BTreeMap<(node, id), V>`: a B-tree filled in key order (as
//! registrations mostly arrive, and as a restart loads its sorted rows) keeps 6 of
//! each leaf's 11 slots used, and every slot holds the whole 48-byte key. Grouped
//! by node, the node name is kept once per node, and a node's ids sit in a `Vec`
//! sized to fit: at 100,000 instances (10 per node, one check each) that is about
//! 120 bytes less per instance (BENCHMARKS.md, 2026-12-01).

use compact_str::CompactString as Str;
use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::ops::Bound::{Excluded, Included, Unbounded};

/// Rows keyed by (node, id), iterated in (node, id) order.
#[derive(Clone, Debug)]
pub(super) struct NodeTable<V> {
    /// One node's rows by id. Most nodes have a few (an agent's services and
    /// checks); a node with many (a sync tool registering thousands of services
    /// on one node, as consul-k8s does) gets a B-tree.
    by_node: BTreeMap<Str, SmallMap<Str, V, 64>>,
    len: usize,
}

impl<V> Default for NodeTable<V> {
    fn default() -> Self {
        NodeTable {
            by_node: BTreeMap::new(),
            len: 0,
        }
    }
}

impl<V> NodeTable<V> {
    /// Number of rows.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Row `id` of `node`.
    pub(super) fn get(&self, node: &str, id: &str) -> Option<&V> {
        self.by_node.get(node)?.get(id)
    }

    /// Whether row `id` of `node` exists.
    pub(super) fn contains(&self, node: &str, id: &str) -> bool {
        self.get(node, id).is_some()
    }

    /// Sets row `id` of `node`; returns the row it replaced.
    pub(super) fn insert(&mut self, node: &str, id: &str, value: V) -> Option<V> {
        let group = self.by_node.entry(Str::from(node)).or_default();
        let old = group.insert(Str::from(id), value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Removes row `id` of `node`; returns it.
    pub(super) fn remove(&mut self, node: &str, id: &str) -> Option<V> {
        let group = self.by_node.get_mut(node)?;
        let old = group.remove(id)?;
        if group.is_empty() {
            self.by_node.remove(node);
        }
        self.len -= 1;
        Some(old)
    }

    /// Rows of `node` as (id, row), in id order.
    pub(super) fn on_node<'a>(&'a self, node: &str) -> impl Iterator<Item = (&'a Str, &'a V)> {
        self.by_node.get(node).into_iter().flat_map(SmallMap::iter)
    }

    /// Every row as (node, id, row), in (node, id) order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&Str, &Str, &V)> {
        self.by_node
            .iter()
            .flat_map(|(node, group)| group.iter().map(move |(id, v)| (node, id, v)))
    }

    /// The rows after (node, id) `after` (all when `None`) as (node, id, row),
    /// in (node, id) order.
    pub(super) fn iter_after<'a>(
        &'a self,
        after: Option<(&'a str, &'a str)>,
    ) -> impl Iterator<Item = (&'a Str, &'a Str, &'a V)> + 'a {
        let lower = after.map_or(Unbounded, |(node, _)| Included(node));
        self.by_node
            .range::<str, _>((lower, Unbounded))
            .flat_map(move |(node, group)| {
                let id = after.and_then(|(n, id)| (n == node.as_str()).then_some(id));
                group.iter_after(id).map(move |(id, v)| (node, id, v))
            })
    }

    /// Every row, mutable, in (node, id) order.
    pub(super) fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.by_node.values_mut().flat_map(SmallMap::values_mut)
    }
}

/// Equal when the rows are: whether a node's rows are in a `Vec` or a
/// `BTreeMap` is not part of the value.
impl<V: PartialEq> PartialEq for NodeTable<V> {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl<V: Eq> Eq for NodeTable<V> {}

/// A map kept as a sorted `Vec` sized to fit while it holds at most `MAX`
/// entries, as a `BTreeMap` past that. Most of the catalog's small maps hold a
/// few entries, and a `BTreeMap` allocates a whole node (room for eleven) even
/// for one; past a few dozen, a `Vec` insert would move every later entry. The
/// catalog uses it for a node's rows (above) and a service name's instances
/// (`catalog.rs`'s `KeySet`).
#[derive(Clone, Debug)]
pub(super) enum SmallMap<K, V, const MAX: usize> {
    Small(Vec<(K, V)>),
    Large(BTreeMap<K, V>),
}

impl<K, V, const MAX: usize> Default for SmallMap<K, V, MAX> {
    fn default() -> Self {
        SmallMap::Small(Vec::new())
    }
}

impl<K: Ord, V, const MAX: usize> SmallMap<K, V, MAX> {
    /// The value at `key`.
    pub(super) fn get<Q: Ord + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        match self {
            SmallMap::Small(rows) => {
                let at = rows.binary_search_by(|(k, _)| k.borrow().cmp(key)).ok()?;
                Some(&rows[at].1)
            }
            SmallMap::Large(rows) => rows.get(key),
        }
    }

    /// Sets `key` to `value`; returns the value it replaced.
    pub(super) fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self {
            SmallMap::Small(rows) => match rows.binary_search_by(|(k, _)| k.cmp(&key)) {
                Ok(at) => Some(std::mem::replace(&mut rows[at].1, value)),
                Err(at) if rows.len() < MAX => {
                    // Exactly one more slot: `insert` alone would reserve four,
                    // and most of these maps never grow past a few entries.
                    rows.reserve_exact(1);
                    rows.insert(at, (key, value));
                    None
                }
                Err(_) => {
                    let mut large: BTreeMap<K, V> = std::mem::take(rows).into_iter().collect();
                    large.insert(key, value);
                    *self = SmallMap::Large(large);
                    None
                }
            },
            SmallMap::Large(rows) => rows.insert(key, value),
        }
    }

    /// Removes `key`; returns its value.
    pub(super) fn remove<Q: Ord + ?Sized>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        match self {
            SmallMap::Small(rows) => {
                let at = rows.binary_search_by(|(k, _)| k.borrow().cmp(key)).ok()?;
                let (_, old) = rows.remove(at);
                rows.shrink_to_fit();
                Some(old)
            }
            SmallMap::Large(rows) => rows.remove(key),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        match self {
            SmallMap::Small(rows) => rows.is_empty(),
            SmallMap::Large(rows) => rows.is_empty(),
        }
    }

    /// (key, value) in key order. (An iterator of either form, not a boxed one:
    /// reads walk these once per instance they answer with.)
    pub(super) fn iter(&self) -> SmallMapIter<'_, K, V> {
        match self {
            SmallMap::Small(rows) => SmallMapIter::Small(rows.iter()),
            SmallMap::Large(rows) => SmallMapIter::Large(rows.iter()),
        }
    }

    /// (key, value) after `after` (all when `None`), in key order.
    pub(super) fn iter_after<'a, Q: Ord + ?Sized>(
        &'a self,
        after: Option<&Q>,
    ) -> SmallMapIter<'a, K, V>
    where
        K: Borrow<Q>,
    {
        let Some(after) = after else {
            return self.iter();
        };
        match self {
            SmallMap::Small(rows) => {
                let from = rows.partition_point(|(k, _)| k.borrow() <= after);
                SmallMapIter::Small(rows[from..].iter())
            }
            SmallMap::Large(rows) => {
                SmallMapIter::LargeAfter(rows.range((Excluded(after), Unbounded)))
            }
        }
    }

    /// Keys in order.
    pub(super) fn keys(&self) -> impl Iterator<Item = &K> {
        self.iter().map(|(k, _)| k)
    }

    /// Values in key order, mutable.
    fn values_mut(&mut self) -> Box<dyn Iterator<Item = &mut V> + '_> {
        match self {
            SmallMap::Small(rows) => Box::new(rows.iter_mut().map(|(_, v)| v)),
            SmallMap::Large(rows) => Box::new(rows.values_mut()),
        }
    }
}

/// Equal when they hold the same entries, whatever their form.
impl<K: Ord, V: PartialEq, const MAX: usize> PartialEq for SmallMap<K, V, MAX> {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl<K: Ord, V: Eq, const MAX: usize> Eq for SmallMap<K, V, MAX> {}

/// [`SmallMap::iter`].
pub(super) enum SmallMapIter<'a, K, V> {
    Small(std::slice::Iter<'a, (K, V)>),
    Large(std::collections::btree_map::Iter<'a, K, V>),
    LargeAfter(std::collections::btree_map::Range<'a, K, V>),
}

impl<'a, K, V> Iterator for SmallMapIter<'a, K, V> {
    type Item = (&'a K, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            SmallMapIter::Small(rows) => rows.next().map(|(k, v)| (k, v)),
            SmallMapIter::Large(rows) => rows.next(),
            SmallMapIter::LargeAfter(rows) => rows.next(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_keep_node_then_id_order_through_growth_and_removal() {
        let mut t = NodeTable::default();
        let mut reference = BTreeMap::new();
        // One node past the Vec's limit, others small, inserted out of order.
        for i in (0..200u32).rev() {
            let (node, id) = (format!("n{}", i % 3), format!("id{:03}", i));
            assert_eq!(t.insert(&node, &id, i), None);
            reference.insert((node, id), i);
        }
        for i in 0..150u32 {
            let (node, id) = ("big".to_string(), format!("x{i:03}"));
            t.insert(&node, &id, i);
            reference.insert((node, id), i);
        }
        assert_eq!(
            t.insert("n0", "id000", 7),
            Some(0),
            "replace returns the old row"
        );
        reference.insert(("n0".into(), "id000".into()), 7);
        for i in (0..150u32).step_by(2) {
            let id = format!("x{i:03}");
            assert_eq!(t.remove("big", &id), Some(i));
            reference.remove(&("big".to_string(), id));
        }
        assert_eq!(t.remove("big", "nope"), None);
        assert_eq!(t.remove("nobody", "x"), None);
        assert_eq!(t.len(), reference.len());
        let got: Vec<_> = t
            .iter()
            .map(|(n, i, v)| (n.to_string(), i.to_string(), *v))
            .collect();
        let want: Vec<_> = reference
            .iter()
            .map(|((n, i), v)| (n.clone(), i.clone(), *v))
            .collect();
        assert_eq!(got, want);
        assert_eq!(t.get("big", "x001"), Some(&1));
        assert!(!t.contains("big", "x000"));
        let n1: Vec<_> = t.on_node("n1").map(|(id, _)| id.to_string()).collect();
        let want_n1: Vec<_> = reference
            .keys()
            .filter(|(n, _)| n == "n1")
            .map(|(_, i)| i.clone())
            .collect();
        assert_eq!(n1, want_n1);
        t.values_mut().for_each(|v| *v += 1);
        assert_eq!(t.get("n0", "id000"), Some(&8));
        for (node, id) in reference.keys() {
            t.remove(node, id);
        }
        assert_eq!(
            (t.len(), t.iter().count(), t.by_node.len()),
            (0, 0, 0),
            "empty nodes are dropped"
        );
    }

    #[test]
    fn equality_ignores_how_a_node_is_stored() {
        let (mut grown, mut small) = (NodeTable::default(), NodeTable::default());
        for i in 0..100 {
            grown.insert("n", &format!("{i:03}"), i);
        }
        for i in 10..100 {
            grown.remove("n", &format!("{i:03}"));
        }
        for i in 0..10 {
            small.insert("n", &format!("{i:03}"), i);
        }
        assert_eq!(grown, small);
        small.insert("n", "x", 1);
        assert_ne!(grown, small);
    }
}
