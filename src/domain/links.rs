//! The link vocabulary of contract §5: link types, relationship names, and which side plays which role.
//!
//! A link is one stored edge (`outward` issue, `inward` issue, type). The issue in a request URL sees
//! `direction = outward` when it is the stored outward side, `inward` otherwise.

use std::fmt;

/// A link type: the stored `type.id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkType {
    /// A plain, symmetric link.
    Relates,
    /// outward depends on inward (inward blocks outward).
    Depends,
    /// outward is the parent, inward the sub-issue.
    Subtask,
    /// outward duplicates inward.
    Duplicates,
    /// outward is in the epic, inward is the epic.
    Epic,
    /// outward is a clone of inward.
    Clone,
}

/// Every link type, in `GET /v2/linktypes` order.
pub const LINK_TYPES: [LinkType; 6] = [
    LinkType::Relates,
    LinkType::Depends,
    LinkType::Subtask,
    LinkType::Duplicates,
    LinkType::Epic,
    LinkType::Clone,
];

impl LinkType {
    /// The `type.id`.
    pub fn id(self) -> &'static str {
        match self {
            LinkType::Relates => "relates",
            LinkType::Depends => "depends",
            LinkType::Subtask => "subtask",
            LinkType::Duplicates => "duplicates",
            LinkType::Epic => "epic",
            LinkType::Clone => "clone",
        }
    }

    /// The role label of the outward side.
    pub fn outward(self) -> &'static str {
        match self {
            LinkType::Relates => "relates",
            LinkType::Depends => "Depends on",
            LinkType::Subtask => "Parent issue",
            LinkType::Duplicates => "Duplicates",
            LinkType::Epic => "Issue in epic",
            LinkType::Clone => "Clone of",
        }
    }

    /// The role label of the inward side.
    pub fn inward(self) -> &'static str {
        match self {
            LinkType::Relates => "relates",
            LinkType::Depends => "Blocks",
            LinkType::Subtask => "Sub-issue",
            LinkType::Duplicates => "Duplicated by",
            LinkType::Epic => "Epic",
            LinkType::Clone => "Cloned to",
        }
    }

    /// Parses a stored `type.id`.
    pub fn parse(s: &str) -> Option<LinkType> {
        LINK_TYPES.iter().copied().find(|t| t.id() == s)
    }

    /// The label of the given side.
    pub fn label(self, d: Direction) -> &'static str {
        match d {
            Direction::Outward => self.outward(),
            Direction::Inward => self.inward(),
        }
    }
}

impl fmt::Display for LinkType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

/// Which stored side an issue is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The outward side.
    Outward,
    /// The inward side.
    Inward,
}

impl Direction {
    /// `"outward"` or `"inward"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outward => "outward",
            Direction::Inward => "inward",
        }
    }

    /// The other side.
    pub fn opposite(self) -> Direction {
        match self {
            Direction::Outward => Direction::Inward,
            Direction::Inward => Direction::Outward,
        }
    }
}

/// A relationship name a client sends, and what it means for the issue in the URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relationship {
    /// The name as documented.
    pub name: &'static str,
    /// The stored link type.
    pub ty: LinkType,
    /// The side the issue in the URL takes.
    pub side: Direction,
    /// Only the link import may create it.
    pub import_only: bool,
}

const fn rel(name: &'static str, ty: LinkType, side: Direction, import_only: bool) -> Relationship {
    Relationship {
        name,
        ty,
        side,
        import_only,
    }
}

/// The table of contract §5.
pub const RELATIONSHIPS: [Relationship; 11] = [
    rel("relates", LinkType::Relates, Direction::Inward, false),
    rel("depends on", LinkType::Depends, Direction::Outward, false),
    rel("is dependent by", LinkType::Depends, Direction::Inward, false),
    rel("is subtask for", LinkType::Subtask, Direction::Inward, false),
    rel("is parent task for", LinkType::Subtask, Direction::Outward, false),
    rel("duplicates", LinkType::Duplicates, Direction::Outward, false),
    rel("is duplicated by", LinkType::Duplicates, Direction::Inward, false),
    rel("has epic", LinkType::Epic, Direction::Outward, false),
    rel("is epic of", LinkType::Epic, Direction::Inward, false),
    rel("original", LinkType::Clone, Direction::Outward, true),
    rel("clone", LinkType::Clone, Direction::Inward, true),
];

impl Relationship {
    /// Finds a relationship by name, case-insensitively, ignoring surrounding blanks.
    pub fn parse(name: &str) -> Option<Relationship> {
        let name = name.trim();
        RELATIONSHIPS
            .iter()
            .copied()
            .find(|r| r.name.eq_ignore_ascii_case(name))
    }

    /// The names a client may send: the create names, or all of them for import.
    pub fn names(import: bool) -> Vec<&'static str> {
        RELATIONSHIPS
            .iter()
            .filter(|r| import || !r.import_only)
            .map(|r| r.name)
            .collect()
    }

    /// Orders (this, other) into (outward, inward).
    pub fn orient<T>(self, this: T, other: T) -> (T, T) {
        match self.side {
            Direction::Outward => (this, other),
            Direction::Inward => (other, this),
        }
    }
}

/// An edge as the rules see it: the stored sides of one link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edge {
    /// The type.
    pub ty: LinkType,
    /// The outward issue id.
    pub outward: i64,
    /// The inward issue id.
    pub inward: i64,
}

/// Whether adding `outward → inward` to `edges` (of the same type) closes a cycle: true when `inward` already
/// reaches `outward` by following outward → inward. This is the reference the SQL query is tested against.
pub fn closes_cycle(edges: &[(i64, i64)], outward: i64, inward: i64) -> bool {
    if outward == inward {
        return true;
    }
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![inward];
    while let Some(n) = stack.pop() {
        if n == outward {
            return true;
        }
        if seen.insert(n) {
            stack.extend(edges.iter().filter(|(o, _)| *o == n).map(|(_, i)| *i));
        }
    }
    false
}

/// The cycles among `edges` (outward → inward, of one type): one closed path per strongly connected component,
/// each as the node sequence starting from its smallest member. Iterative Tarjan, so deep graphs cannot overflow.
pub fn find_cycles<T: Clone + Ord + std::hash::Hash>(edges: &[(T, T)]) -> Vec<Vec<T>> {
    use std::collections::{HashMap, HashSet, VecDeque};
    let mut succ: HashMap<&T, Vec<&T>> = HashMap::new();
    for (a, b) in edges {
        succ.entry(a).or_default().push(b);
        succ.entry(b).or_default();
    }
    let mut nodes: Vec<&T> = succ.keys().copied().collect();
    nodes.sort();
    // Tarjan's algorithm with an explicit stack of (node, next successor index).
    let (mut index, mut low, mut on_stack) = (HashMap::new(), HashMap::new(), HashSet::new());
    let (mut stack, mut sccs, mut next) = (Vec::new(), Vec::new(), 0usize);
    for &start in &nodes {
        if index.contains_key(start) {
            continue;
        }
        let mut work: Vec<(&T, usize)> = vec![(start, 0)];
        index.insert(start, next);
        low.insert(start, next);
        next += 1;
        stack.push(start);
        on_stack.insert(start);
        while let Some(&mut (v, ref mut i)) = work.last_mut() {
            let vs = succ.get(v).map(Vec::as_slice).unwrap_or(&[]);
            if *i < vs.len() {
                let w = vs[*i];
                *i += 1;
                if !index.contains_key(w) {
                    index.insert(w, next);
                    low.insert(w, next);
                    next += 1;
                    stack.push(w);
                    on_stack.insert(w);
                    work.push((w, 0));
                } else if on_stack.contains(w) {
                    let lw = index[w];
                    let lv = low.entry(v).or_insert(lw);
                    *lv = (*lv).min(lw);
                }
            } else {
                work.pop();
                if let Some(&(parent, _)) = work.last() {
                    let lv = low[v];
                    let lp = low.entry(parent).or_insert(lv);
                    *lp = (*lp).min(lv);
                }
                if low[v] == index[v] {
                    let mut comp = Vec::new();
                    while let Some(w) = stack.pop() {
                        on_stack.remove(w);
                        comp.push(w);
                        if w == v {
                            break;
                        }
                    }
                    let self_loop = comp.len() == 1 && succ.get(v).is_some_and(|s| s.contains(&v));
                    if comp.len() > 1 || self_loop {
                        sccs.push(comp);
                    }
                }
            }
        }
    }
    // For each component, a shortest closed path from its smallest member back to itself (BFS inside it).
    let mut cycles = Vec::new();
    for comp in sccs {
        let members: HashSet<&T> = comp.iter().copied().collect();
        let Some(&start) = comp.iter().min() else { continue };
        let mut prev: HashMap<&T, &T> = HashMap::new();
        let mut queue = VecDeque::from([start]);
        let mut closing = None;
        'bfs: while let Some(v) = queue.pop_front() {
            let mut vs: Vec<&T> = succ.get(v).cloned().unwrap_or_default();
            vs.sort();
            for w in vs {
                if w == start {
                    closing = Some(v);
                    break 'bfs;
                }
                if members.contains(w) && !prev.contains_key(w) {
                    prev.insert(w, v);
                    queue.push_back(w);
                }
            }
        }
        let Some(mut at) = closing else { continue };
        let mut path = vec![at.clone()];
        while at != start {
            match prev.get(at) {
                Some(p) => {
                    at = p;
                    path.push(at.clone());
                }
                None => break,
            }
        }
        path.reverse();
        cycles.push(path);
    }
    cycles.sort();
    cycles
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn relationship_names_match_case_insensitively() {
        assert_eq!(Relationship::parse("Depends On").map(|r| r.ty), Some(LinkType::Depends));
        assert_eq!(Relationship::parse(" RELATES ").map(|r| r.ty), Some(LinkType::Relates));
        assert!(Relationship::parse("blocks").is_none());
    }

    #[test]
    fn create_names_leave_out_the_import_only_clone_pair() {
        let names = Relationship::names(false);
        assert_eq!(names.len(), 9);
        assert!(!names.contains(&"clone") && !names.contains(&"original"));
        assert_eq!(Relationship::names(true).len(), 11);
    }

    #[test]
    fn the_seed_relates_example_shows_the_creator_inward() {
        let r = Relationship::parse("relates").map(|r| r.side);
        assert_eq!(r, Some(Direction::Inward));
    }

    #[test]
    fn an_epic_child_sees_outward_and_a_parent_sees_outward() {
        assert_eq!(
            Relationship::parse("has epic").map(|r| r.side),
            Some(Direction::Outward)
        );
        assert_eq!(
            Relationship::parse("is parent task for").map(|r| r.side),
            Some(Direction::Outward)
        );
    }

    #[test]
    fn every_type_but_relates_has_distinct_role_labels() {
        for t in LINK_TYPES {
            assert_eq!(LinkType::parse(t.id()), Some(t));
            if t != LinkType::Relates {
                assert_ne!(t.inward(), t.outward(), "{t}");
            }
        }
    }

    #[test]
    fn a_self_edge_and_a_back_edge_close_cycles() {
        assert!(closes_cycle(&[], 1, 1));
        assert!(closes_cycle(&[(1, 2)], 2, 1));
        assert!(closes_cycle(&[(1, 2), (2, 3)], 3, 1));
        assert!(!closes_cycle(&[(1, 2), (2, 3)], 1, 3));
    }

    proptest! {
        /// Each relationship has an inverse: the same edge seen from the other issue, with the opposite direction
        /// and the same type, and the two roles it names are the two labels of that type.
        #[test]
        fn the_view_from_either_side_of_a_link_is_a_consistent_inverse(idx in 0usize..11, a in 1i64..1000, b in 1i64..1000) {
            let r = RELATIONSHIPS[idx];
            let (out, inw) = r.orient(a, b);
            if r.ty != LinkType::Relates {
                // Exactly one name describes the same edge from the other issue.
                let inverses: Vec<_> = RELATIONSHIPS.iter().filter(|x| x.ty == r.ty && x.side == r.side.opposite()).collect();
                prop_assert_eq!(inverses.len(), 1);
                for inv in inverses {
                    prop_assert_eq!(inv.orient(b, a), (out, inw));
                    prop_assert_eq!(inv.import_only, r.import_only);
                }
            }
            // The issue in the URL is the stored outward side exactly when its relationship says so.
            prop_assert_eq!(out == a, r.side == Direction::Outward || a == b);
            prop_assert_eq!(inw == b, r.side == Direction::Outward || a == b);
        }

        /// Adding an edge to an acyclic graph closes a cycle exactly when a path already leads back.
        #[test]
        fn cycle_detection_agrees_with_a_topological_check(edges in proptest::collection::vec((0i64..8, 0i64..8), 0..20), o in 0i64..8, i in 0i64..8) {
            // Keep only the edges that leave the graph acyclic (ordered by the reference itself).
            let mut g: Vec<(i64, i64)> = Vec::new();
            for (a, b) in edges {
                if !closes_cycle(&g, a, b) { g.push((a, b)); }
            }
            let mut with = g.clone();
            with.push((o, i));
            prop_assert_eq!(closes_cycle(&g, o, i), has_cycle(&with));
        }
    }

    #[test]
    fn find_cycles_reports_each_loop_once_from_its_smallest_member() {
        let edges = [(3, 1), (1, 2), (2, 3), (4, 5), (5, 5), (6, 7)];
        assert_eq!(find_cycles(&edges), vec![vec![1, 2, 3], vec![5]]);
        assert!(find_cycles(&[(1, 2), (2, 3)]).is_empty());
    }

    proptest! {
        /// A graph has a cycle exactly when `find_cycles` reports one, and every reported cycle is a closed path.
        #[test]
        fn reported_cycles_are_real_and_none_are_missed(edges in proptest::collection::vec((0i64..7, 0i64..7), 0..16)) {
            let cycles = find_cycles(&edges);
            prop_assert_eq!(!cycles.is_empty(), has_cycle(&edges));
            for c in &cycles {
                for (k, a) in c.iter().enumerate() {
                    let b = &c[(k + 1) % c.len()];
                    prop_assert!(edges.contains(&(*a, *b)), "{:?} is not a path of {:?}", c, edges);
                }
            }
        }
    }

    /// Kahn's algorithm: an independent reference for "this graph has a cycle".
    fn has_cycle(edges: &[(i64, i64)]) -> bool {
        let mut indeg = std::collections::HashMap::<i64, usize>::new();
        for &(a, b) in edges {
            indeg.entry(a).or_default();
            *indeg.entry(b).or_default() += 1;
        }
        let mut queue: Vec<i64> = indeg.iter().filter(|(_, d)| **d == 0).map(|(n, _)| *n).collect();
        let mut removed = 0;
        let mut remaining: Vec<(i64, i64)> = edges.to_vec();
        while let Some(n) = queue.pop() {
            removed += 1;
            let (gone, keep): (Vec<_>, Vec<_>) = remaining.into_iter().partition(|(a, _)| *a == n);
            remaining = keep;
            for (_, b) in gone {
                if let Some(d) = indeg.get_mut(&b) {
                    *d -= 1;
                    if *d == 0 {
                        queue.push(b);
                    }
                }
            }
        }
        removed != indeg.len()
    }
}
