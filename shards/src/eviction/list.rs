//! A slab of entries threaded on intrusive doubly linked lists.
//!
//! Why not `VecDeque` queues with lazy deletion: the shard removes and re-weights
//! arbitrary keys (deletes, overwrites, pin changes), and tombstones would then pile
//! up in the queues and skew their byte counts. With explicit links every operation
//! is O(1) and each list's `bytes` is exact, which S3-FIFO needs to size its queues.
//!
//! Indices are `u32` to keep a node small; 4 billion entries per shard is plenty.

/// "No node": the end of a list.
pub(super) const NIL: u32 = u32::MAX;

/// Which list a node is on. LRU uses only `Main`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Queue {
    Small,
    Main,
}

#[derive(Debug)]
pub(super) struct Node<K, V> {
    pub key: K,
    /// What the owner keeps with the key (`()` for plain eviction state).
    pub value: V,
    pub weight: u64,
    /// Towards the head (newer).
    prev: u32,
    /// Towards the tail (older).
    next: u32,
    /// S3-FIFO's access counter, saturating at [`super::s3fifo::MAX_FREQ`].
    pub freq: u8,
    pub pinned: bool,
    pub queue: Queue,
}

/// A list's ends plus the aggregates the policies decide with.
#[derive(Debug, Default)]
pub(super) struct List {
    head: Option<u32>,
    tail: Option<u32>,
    pub len: usize,
    pub bytes: u64,
    /// Entries on this list that may be evicted: an eviction loop only walks a list
    /// that has some, so it cannot spin over pinned entries forever.
    pub unpinned: usize,
}

impl List {
    pub fn tail(&self) -> Option<u32> {
        self.tail
    }
}

#[derive(Debug)]
pub(super) struct Slab<K, V> {
    nodes: Vec<Option<Node<K, V>>>,
    free: Vec<u32>,
}

impl<K, V> Slab<K, V> {
    pub fn with_capacity(entries: usize) -> Self {
        Self {
            nodes: Vec::with_capacity(entries),
            free: Vec::new(),
        }
    }

    /// Gives back the capacity beyond the last node in use.
    pub fn shrink_to_fit(&mut self) {
        self.nodes.shrink_to_fit();
    }

    /// Every node in use, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Node<K, V>> {
        self.nodes.iter().flatten()
    }

    /// Stores a new node, unlinked, and returns its index.
    pub fn alloc(&mut self, key: K, value: V, weight: u64, pinned: bool, queue: Queue) -> u32 {
        let node = Node {
            key,
            value,
            weight,
            prev: NIL,
            next: NIL,
            freq: 0,
            pinned,
            queue,
        };
        if let Some(idx) = self.free.pop() {
            self.nodes[idx as usize] = Some(node);
            idx
        } else {
            let idx = u32::try_from(self.nodes.len()).expect("more than u32::MAX cache entries");
            assert!(idx != NIL, "more than u32::MAX - 1 cache entries");
            self.nodes.push(Some(node));
            idx
        }
    }

    /// Frees an unlinked node and hands back its contents.
    pub fn dealloc(&mut self, idx: u32) -> Node<K, V> {
        let node = self.nodes[idx as usize]
            .take()
            .expect("dealloc of a free slot");
        self.free.push(idx);
        node
    }

    pub fn get(&self, idx: u32) -> &Node<K, V> {
        self.nodes[idx as usize]
            .as_ref()
            .expect("index of a free slot")
    }

    pub fn get_mut(&mut self, idx: u32) -> &mut Node<K, V> {
        self.nodes[idx as usize]
            .as_mut()
            .expect("index of a free slot")
    }

    /// Links `idx` at the head (newest end) of `list` and counts it there.
    pub fn push_head(&mut self, list: &mut List, idx: u32) {
        let old_head = list.head;
        let node = self.get_mut(idx);
        node.prev = NIL;
        node.next = old_head.unwrap_or(NIL);
        list.bytes += node.weight;
        list.unpinned += usize::from(!node.pinned);
        list.len += 1;
        match old_head {
            Some(h) => self.get_mut(h).prev = idx,
            None => list.tail = Some(idx),
        }
        list.head = Some(idx);
    }

    /// Unlinks `idx` from `list` (which must be the list it is on) and uncounts it.
    pub fn unlink(&mut self, list: &mut List, idx: u32) {
        let node = self.get_mut(idx);
        let (prev, next) = (node.prev, node.next);
        node.prev = NIL;
        node.next = NIL;
        list.bytes -= node.weight;
        list.unpinned -= usize::from(!node.pinned);
        list.len -= 1;
        match prev {
            NIL => list.head = (next != NIL).then_some(next),
            p => self.get_mut(p).next = next,
        }
        match next {
            NIL => list.tail = (prev != NIL).then_some(prev),
            n => self.get_mut(n).prev = prev,
        }
    }

    /// Moves `idx` to the head of `list` (it must already be on it).
    pub fn move_to_head(&mut self, list: &mut List, idx: u32) {
        if list.head != Some(idx) {
            self.unlink(list, idx);
            self.push_head(list, idx);
        }
    }

    /// Changes weight and pin of a linked node, keeping `list`'s aggregates exact.
    pub fn reweigh(&mut self, list: &mut List, idx: u32, weight: u64, pinned: bool) {
        let node = self.get_mut(idx);
        list.bytes = list.bytes - node.weight + weight;
        list.unpinned = list.unpinned + usize::from(!pinned) - usize::from(!node.pinned);
        node.weight = weight;
        node.pinned = pinned;
    }
}
