//! Linearizability checking for the histories the chaos tests record.
//!
//! The checker is the Wing–Gong search with Lowe's memoization (the "WGL" algorithm, as implemented by
//! porcupine). A history is first split into independent partitions with [`Model::partition`]; linearizability
//! is compositional, so each partition (one registry object) is checked on its own. Within a partition the
//! call and return events of the operations are put in a doubly linked list sorted by time. The search walks
//! that list from the front: every call met before the first return belongs to an operation that no pending
//! operation precedes in real time, so it may be linearized next. If the model accepts its output from the
//! current state, the operation is lifted out of the list and the search restarts from the front; when the
//! first return is reached instead, no candidate is left and the search backtracks by re-inserting the last
//! lifted operation. A set of (linearized operations, model state) pairs already explored prunes repeated work.
//! The search is iterative, so long histories cannot overflow the stack.
//!
//! Operations whose outcome the client never learned (timeout, lost connection) have no return event: their
//! completion time is +infinity, so they may be linearized anywhere after their invocation, and the search
//! succeeds as soon as every operation with a known outcome is linearized, which leaves any subset of the
//! unknown ones out. They are kept in a second list and tried only after the known candidates, i.e. as late as
//! possible, and never where they would not change the state (leaving them pending loses nothing then).
//! Operations the server refused before they took effect must not be recorded at all.
//!
//! Real-time order is strict: an operation precedes another only if it completed strictly before the other
//! was invoked. Times are read on the client, so an equal timestamp does not tell which happened first.

use std::collections::{BTreeMap, HashSet};
use std::fmt::{self, Debug, Display};
use std::hash::Hash;
use std::mem;

/// A sequential specification.
pub trait Model {
    /// The state of one partition (e.g. one registry object).
    type State: Clone + Eq + Hash + Debug;
    /// What a client asked for.
    type Input: Debug;
    /// What the client was told.
    type Output: Debug;

    /// The state before any operation.
    fn init(&self) -> Self::State;

    /// Applies `input` to `state`; `Some(next)` if `output` is what the spec allows from `state`, else `None`.
    /// For an operation with unknown outcome, `output` is None and the step must succeed whenever the input is
    /// applicable (return the next state the op would produce).
    fn step(&self, state: &Self::State, input: &Self::Input, output: Option<&Self::Output>) -> Option<Self::State>;

    /// Splits operations into independent partitions (P-compositionality): operations on different objects are
    /// checked separately. Returns a partition key per op.
    fn partition(&self, input: &Self::Input) -> String;
}

/// One client operation as the client saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation<I, O> {
    /// The client (connection, task) that issued the operation; only used in explanations.
    pub client: usize,
    /// What was asked.
    pub input: I,
    /// Client-side time the request was sent, e.g. nanoseconds since the run started.
    pub invoke: u64,
    /// Client-side time the answer arrived and the answer; `None` when the outcome is unknown.
    pub complete: Option<(u64, O)>,
}

impl<I, O> Operation<I, O> {
    /// The answer the client got, if any.
    pub fn output(&self) -> Option<&O> {
        self.complete.as_ref().map(|(_, output)| output)
    }
}

/// The result of a check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every partition is linearizable.
    Ok,
    /// A partition has no linearization: a consistency violation.
    Illegal {
        /// The partition key.
        partition: String,
        /// The longest linearizable prefix found and the operations that could not be placed after it.
        explanation: String,
    },
    /// The search of a partition ran out of budget: neither a violation nor a proof of correctness.
    Timeout {
        /// The partition key.
        partition: String,
    },
}

impl Verdict {
    /// Whether the history was found linearizable.
    #[must_use]
    pub fn is_ok(&self) -> bool {
        matches!(self, Verdict::Ok)
    }
}

impl Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Ok => write!(f, "linearizable"),
            Verdict::Illegal { partition, explanation } => {
                write!(f, "not linearizable (partition {partition:?}):\n{explanation}")
            }
            Verdict::Timeout { partition } => write!(f, "search budget exhausted on partition {partition:?}"),
        }
    }
}

/// Checks each partition; gives up on a partition after `budget` search steps (returns Timeout, which callers
/// report separately from a violation).
///
/// A step is one event visited by the search: trying a candidate, moving past one, or backtracking. A correct
/// history usually takes a few steps per operation; violations and many concurrent or unknown-outcome operations
/// on one object take more.
///
/// Partitions are checked in key order. The first violation found is returned; otherwise the first partition
/// that timed out, if any; otherwise [`Verdict::Ok`].
#[must_use]
pub fn check<M: Model>(model: &M, history: &[Operation<M::Input, M::Output>], budget: u64) -> Verdict {
    let mut timeout = None;
    for (partition, ops) in partitions(model, history) {
        match check_partition(model, history, partition, ops, budget) {
            Verdict::Ok => {}
            illegal @ Verdict::Illegal { .. } => return illegal,
            timed_out @ Verdict::Timeout { .. } => {
                timeout.get_or_insert(timed_out);
            }
        }
    }
    timeout.unwrap_or(Verdict::Ok)
}

/// Like [`check`], but checks every partition and returns each partition's key and verdict, in key order.
#[must_use]
pub fn check_partitions<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    budget: u64,
) -> Vec<(String, Verdict)> {
    partitions(model, history)
        .into_iter()
        .map(|(partition, ops)| {
            let verdict = check_partition(model, history, partition.clone(), ops, budget);
            (partition, verdict)
        })
        .collect()
}

/// Groups the indices of `history` by partition key.
fn partitions<M: Model>(model: &M, history: &[Operation<M::Input, M::Output>]) -> BTreeMap<String, Vec<usize>> {
    let mut partitions: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (index, op) in history.iter().enumerate() {
        partitions.entry(model.partition(&op.input)).or_default().push(index);
    }
    partitions
}

/// Checks the operations `indices` of `history`, which all belong to `partition`.
fn check_partition<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    partition: String,
    mut indices: Vec<usize>,
    budget: u64,
) -> Verdict {
    // Local operation ids follow invocation order, which keeps the memoization keys small (see `BitsetKey`).
    indices.sort_by_key(|&index| (history[index].invoke, index));
    let ops: Vec<&Operation<M::Input, M::Output>> = indices.iter().map(|&index| &history[index]).collect();
    match search(model, &ops, budget) {
        Outcome::Linearizable => Verdict::Ok,
        Outcome::Timeout => Verdict::Timeout { partition },
        Outcome::Illegal(dead_end) => {
            let explanation = Explanation { model, ops: &ops, indices: &indices, dead_end: &dead_end }.to_string();
            Verdict::Illegal { partition, explanation }
        }
    }
}

/// A node of the event lists.
#[derive(Clone, Copy, Debug)]
enum Node {
    /// The invocation of a local operation with a known outcome.
    Call(usize),
    /// The completion of a local operation with a known outcome.
    Return(usize),
    /// The invocation of a local operation with an unknown outcome.
    Unknown(usize),
    /// A head or tail sentinel.
    End,
}

/// Index of the head sentinel of the list of known operations' events.
const HEAD: usize = 0;

/// Two doubly linked lists in one arena, from which nodes are removed and re-inserted in LIFO order: the call and
/// return events of the operations with a known outcome sorted by time, and the calls of the operations with an
/// unknown outcome sorted by invocation time.
struct EventList {
    nodes: Vec<Node>,
    /// The time of each node: invocation for calls, completion for returns.
    times: Vec<u64>,
    prev: Vec<usize>,
    next: Vec<usize>,
    /// Index of the head sentinel of the unknown operations' list.
    unknown_head: usize,
    /// The return node of each local operation, `None` when its outcome is unknown.
    returns: Vec<Option<usize>>,
}

impl EventList {
    fn new<I, O>(ops: &[&Operation<I, O>]) -> Self {
        // (time, kind, op): kind 0 is a call and 1 a return, so at equal times calls sort before returns. An
        // operation precedes another only if it returned strictly before the other was invoked: the client reads
        // both times, and an equal reading cannot tell which came first (the two effects may even be
        // simultaneous). Putting the call first makes such operations concurrent, which never invents a
        // precedence the history does not prove, so this tie-break cannot cause a false violation.
        let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * ops.len());
        let mut unknown: Vec<(u64, usize)> = Vec::new();
        for (op, operation) in ops.iter().enumerate() {
            match &operation.complete {
                Some((complete, _)) => {
                    events.push((operation.invoke, 0, op));
                    // A completion before the invocation can only be a clock glitch; clamp it.
                    events.push(((*complete).max(operation.invoke), 1, op));
                }
                None => unknown.push((operation.invoke, op)),
            }
        }
        events.sort_unstable();
        unknown.sort_unstable();

        let len = events.len() + unknown.len() + 4;
        let mut list = EventList {
            nodes: Vec::with_capacity(len),
            times: Vec::with_capacity(len),
            prev: Vec::with_capacity(len),
            next: Vec::with_capacity(len),
            unknown_head: events.len() + 2,
            returns: vec![None; ops.len()],
        };
        let known = events
            .into_iter()
            .map(|(time, kind, op)| (time, if kind == 0 { Node::Call(op) } else { Node::Return(op) }));
        list.push_list(known);
        list.push_list(unknown.into_iter().map(|(time, op)| (time, Node::Unknown(op))));
        list
    }

    /// Appends a list of `(time, node)`, between a head and a tail sentinel.
    fn push_list(&mut self, nodes: impl Iterator<Item = (u64, Node)>) {
        let head = self.nodes.len();
        for (time, node) in std::iter::once((0, Node::End)).chain(nodes).chain(std::iter::once((u64::MAX, Node::End))) {
            let index = self.nodes.len();
            if let Node::Return(op) = node {
                self.returns[op] = Some(index);
            }
            self.nodes.push(node);
            self.times.push(time);
            self.prev.push(index.saturating_sub(1).max(head));
            self.next.push(index + 1);
        }
        let tail = self.nodes.len() - 1;
        self.next[tail] = tail;
    }

    fn unlink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = next;
        self.prev[next] = prev;
    }

    fn relink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = node;
        self.prev[next] = node;
    }

    /// Removes the call node `call` of `op` and its return node, if any.
    fn lift(&mut self, call: usize, op: usize) {
        self.unlink(call);
        if let Some(ret) = self.returns[op] {
            self.unlink(ret);
        }
    }

    /// Undoes the latest [`EventList::lift`], which must have been `lift(call, op)`.
    fn unlift(&mut self, call: usize, op: usize) {
        if let Some(ret) = self.returns[op] {
            self.relink(ret);
        }
        self.relink(call);
    }

    /// The operations that may be linearized next: the calls before the first return, then the unknown
    /// operations invoked no later than that return; and the first return node.
    fn candidates(&self) -> (Vec<usize>, usize) {
        let mut candidates = Vec::new();
        let mut node = self.next[HEAD];
        while let Node::Call(op) = self.nodes[node] {
            candidates.push(op);
            node = self.next[node];
        }
        let first_return = node;
        node = self.next[self.unknown_head];
        while let Node::Unknown(op) = self.nodes[node] {
            if self.times[node] > self.times[first_return] {
                break;
            }
            candidates.push(op);
            node = self.next[node];
        }
        (candidates, first_return)
    }
}

/// The set of linearized operations.
struct Bitset {
    words: Vec<u64>,
    /// Number of leading words that are all ones: `words[..full]` are `!0` and `words[full]` is not.
    full: usize,
}

/// A canonical, compact form of a [`Bitset`] for the memoization set: one past the highest member, and the
/// non-members below it. Operations are numbered in invocation order, so those are the few operations still
/// pending among the ones invoked so far, however long the history.
#[derive(Clone, PartialEq, Eq, Hash)]
struct BitsetKey {
    end: usize,
    holes: Box<[usize]>,
}

impl Bitset {
    fn new(len: usize) -> Self {
        Bitset { words: vec![0; len.div_ceil(64)], full: 0 }
    }

    fn set(&mut self, bit: usize) {
        self.words[bit / 64] |= 1 << (bit % 64);
        while self.words.get(self.full) == Some(&u64::MAX) {
            self.full += 1;
        }
    }

    fn clear(&mut self, bit: usize) {
        let word = bit / 64;
        self.words[word] &= !(1 << (bit % 64));
        self.full = self.full.min(word);
    }

    fn key(&self) -> BitsetKey {
        let Some(last) = self.words.iter().rposition(|&word| word != 0) else {
            return BitsetKey { end: 0, holes: Box::default() };
        };
        let top = 63 - self.words[last].leading_zeros() as usize;
        let mut holes = Vec::new();
        for (index, &word) in self.words.iter().enumerate().take(last + 1).skip(self.full) {
            let mut zeros = !word;
            if index == last {
                // Only the bits below the highest member.
                zeros &= (1 << top) - 1;
            }
            while zeros != 0 {
                holes.push(index * 64 + zeros.trailing_zeros() as usize);
                zeros &= zeros - 1;
            }
        }
        BitsetKey { end: last * 64 + top + 1, holes: holes.into_boxed_slice() }
    }
}

/// Where the search got stuck with the most operations linearized.
struct DeadEnd<S> {
    /// Local ids of the linearized operations, in linearization order.
    prefix: Vec<usize>,
    /// The model state after the prefix.
    state: S,
    /// Operations that could have been linearized next but led nowhere.
    candidates: Vec<usize>,
    /// The operation whose return ended the candidates, if the end of the list did not.
    blocker: Option<usize>,
}

enum Outcome<S> {
    Linearizable,
    Illegal(DeadEnd<S>),
    Timeout,
}

/// A linearized operation on the search stack.
struct Frame<S> {
    /// Its call node.
    call: usize,
    /// The local operation.
    op: usize,
    /// The model state before it.
    state: S,
    /// The bound on unknown operations' invocations in force when it was chosen.
    bound: u64,
}

/// The WGL search over one partition's operations, which must be sorted by invocation time.
///
/// Candidates with a known outcome are tried before unknown ones, so an unknown operation is linearized only when
/// the known ones cannot go on without it, that is as late as possible; the order does not affect completeness.
fn search<M: Model>(model: &M, ops: &[&Operation<M::Input, M::Output>], budget: u64) -> Outcome<M::State> {
    let mut list = EventList::new(ops);
    let mut linearized = Bitset::new(ops.len());
    let mut cache: HashSet<(BitsetKey, M::State)> = HashSet::new();
    let mut stack: Vec<Frame<M::State>> = Vec::new();
    let mut state = model.init();
    let mut known_left = ops.iter().filter(|op| op.complete.is_some()).count();
    let mut best: Option<DeadEnd<M::State>> = None;
    let mut steps = 0;
    // While scanning unknown operations: the time of the first return, after which they are not candidates.
    let mut bound = u64::MAX;
    let mut node = list.next[HEAD];

    while known_left > 0 {
        if steps >= budget {
            return Outcome::Timeout;
        }
        steps += 1;
        let op = match list.nodes[node] {
            Node::Call(op) => op,
            Node::Return(_) => {
                bound = list.times[node];
                node = list.next[list.unknown_head];
                continue;
            }
            Node::Unknown(op) if list.times[node] <= bound => op,
            Node::Unknown(_) | Node::End => {
                // No candidate left: backtrack.
                if best.as_ref().is_none_or(|best| stack.len() > best.prefix.len()) {
                    let (candidates, first_return) = list.candidates();
                    best = Some(DeadEnd {
                        prefix: stack.iter().map(|frame| frame.op).collect(),
                        state: state.clone(),
                        candidates,
                        blocker: match list.nodes[first_return] {
                            Node::Return(op) => Some(op),
                            _ => None,
                        },
                    });
                }
                let Some(frame) = stack.pop() else {
                    // `best` was just recorded, as nothing is longer than an empty prefix only if nothing came before.
                    return match best {
                        Some(dead_end) => Outcome::Illegal(dead_end),
                        None => Outcome::Illegal(DeadEnd {
                            prefix: Vec::new(),
                            state,
                            candidates: Vec::new(),
                            blocker: None,
                        }),
                    };
                };
                if ops[frame.op].complete.is_some() {
                    known_left += 1;
                }
                linearized.clear(frame.op);
                list.unlift(frame.call, frame.op);
                state = frame.state;
                bound = frame.bound;
                node = list.next[frame.call];
                continue;
            }
        };

        let output = ops[op].output();
        // An unknown operation that would not change the state is not worth linearizing here: leaving it pending
        // keeps every option linearizing it gives, since it may still be placed later, or never.
        let step = model.step(&state, &ops[op].input, output).filter(|next| output.is_some() || *next != state);
        if let Some(next_state) = step {
            linearized.set(op);
            if cache.insert((linearized.key(), next_state.clone())) {
                stack.push(Frame { call: node, op, state: mem::replace(&mut state, next_state), bound });
                if output.is_some() {
                    known_left -= 1;
                }
                list.lift(node, op);
                node = list.next[HEAD];
                continue;
            }
            linearized.clear(op);
        }
        node = list.next[node];
    }
    Outcome::Linearizable
}

/// Operations shown at most in each list of an explanation.
const SHOWN: usize = 20;

/// The human-readable account of a [`DeadEnd`].
struct Explanation<'a, M: Model> {
    model: &'a M,
    ops: &'a [&'a Operation<M::Input, M::Output>],
    /// Index in the history of each local operation.
    indices: &'a [usize],
    dead_end: &'a DeadEnd<M::State>,
}

impl<M: Model> Explanation<'_, M> {
    fn op(&self, f: &mut fmt::Formatter<'_>, op: usize) -> fmt::Result {
        let operation = self.ops[op];
        write!(f, "#{} client {} ", self.indices[op], operation.client)?;
        match &operation.complete {
            Some((complete, output)) => {
                write!(f, "[{} .. {}] {:?} -> {:?}", operation.invoke, complete, operation.input, output)
            }
            None => write!(f, "[{} .. ?] {:?} -> outcome unknown", operation.invoke, operation.input),
        }
    }
}

impl<M: Model> Display for Explanation<'_, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let DeadEnd { prefix, state, candidates, blocker } = self.dead_end;
        let known = self.ops.iter().filter(|op| op.complete.is_some()).count();
        let unknown = self.ops.len() - known;
        writeln!(
            f,
            "no linearization of the {known} operations with a known outcome exists ({unknown} more with unknown \
             outcome could have been placed anywhere after their invocation or left out)."
        )?;

        writeln!(f, "longest linearizable prefix: {} operations", prefix.len())?;
        let skipped = prefix.len().saturating_sub(SHOWN);
        let mut replayed = self.model.init();
        for (position, &op) in prefix.iter().enumerate() {
            if position == skipped && skipped > 0 {
                writeln!(f, "  ... {skipped} earlier operations, reaching state {replayed:?}, then:")?;
            }
            if let Some(next) = self.model.step(&replayed, &self.ops[op].input, self.ops[op].output()) {
                replayed = next;
            }
            if position >= skipped {
                write!(f, "  ")?;
                self.op(f, op)?;
                writeln!(f, "  => {replayed:?}")?;
            }
        }
        writeln!(f, "state after the prefix: {state:?}")?;

        match blocker {
            Some(op) => {
                let complete = self.ops[*op].complete.as_ref().map_or(0, |(complete, _)| *complete);
                writeln!(
                    f,
                    "candidates to linearize next (operation #{} completed at {complete}, so nothing invoked later \
                     qualifies), none of which leads to a linearization:",
                    self.indices[*op]
                )?;
            }
            None => writeln!(f, "candidates to linearize next, none of which leads to a linearization:")?,
        }
        let mut shown = 0;
        let mut idle = 0;
        for &op in candidates {
            let next = self.model.step(state, &self.ops[op].input, self.ops[op].output());
            let known = self.ops[op].complete.is_some();
            if !known && next.as_ref() == Some(state) {
                idle += 1;
                continue;
            }
            shown += 1;
            if shown > SHOWN {
                continue;
            }
            write!(f, "  ")?;
            self.op(f, op)?;
            match (next, known) {
                (None, true) => writeln!(f, ": not allowed from state {state:?}")?,
                (None, false) => writeln!(f, ": not applicable from state {state:?}")?,
                (Some(next), true) => writeln!(f, ": allowed (=> {next:?}), but nothing linearizes after it")?,
                (Some(next), false) => writeln!(f, ": taking effect here (=> {next:?}) leads nowhere either")?,
            }
        }
        if shown > SHOWN {
            writeln!(f, "  ... and {} more", shown - SHOWN)?;
        }
        if idle > 0 {
            writeln!(f, "  (and {idle} operations with unknown outcome that would change nothing here)")?;
        }
        Ok(())
    }
}

/// The example model the algorithm's tests check against (the chaos runs use
/// `checks::linearizable`'s model of the real registry).
#[cfg(test)]
mod example {
    use super::Model;

    /// The state of one registry object: a user (identified by the client-chosen name), an API key or a session
    /// (identified by the id the server returned).
    #[derive(Clone, Debug, PartialEq, Eq, Hash)]
    pub enum ObjState {
        /// Never created.
        Absent,
        /// Created and usable.
        Active,
        /// A disabled user.
        Disabled,
        /// A revoked API key or session.
        Revoked,
    }

    /// A registry operation on the object it names. Object names must be unique across kinds (e.g. prefix them
    /// with `user:`, `key:`, `session:`), since they are the partition keys.
    #[derive(Clone, Debug)]
    pub enum RegInput {
        /// Create a user, API key or session.
        Create(String),
        /// Disable a user.
        Disable(String),
        /// Re-enable a user.
        Enable(String),
        /// Revoke an API key or session.
        Revoke(String),
        /// Read the object's state.
        Read(String),
    }

    impl RegInput {
        /// The object the operation is about.
        pub fn object(&self) -> &str {
            match self {
                RegInput::Create(object)
                | RegInput::Disable(object)
                | RegInput::Enable(object)
                | RegInput::Revoke(object)
                | RegInput::Read(object) => object,
            }
        }
    }

    /// The answer to a registry operation.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub enum RegOutput {
        /// The object was created.
        Created,
        /// Create found the object already there.
        AlreadyExists,
        /// Disable, Enable or Revoke took effect (or had already).
        Done,
        /// Disable, Enable or Revoke found no such object.
        NotFound,
        /// What a read saw.
        Observed(ObjState),
    }

    /// The sequential specification of one registry object; partitions are object names.
    #[derive(Clone, Copy, Debug, Default)]
    pub struct Registry;

    impl Registry {
        /// The next state and the answer the specification prescribes for `input` from `state`, or `None` when no
        /// answer is legal: disabling or enabling a revoked object, or revoking a disabled one, mixes up users with
        /// keys and sessions.
        pub fn expected(state: &ObjState, input: &RegInput) -> Option<(ObjState, RegOutput)> {
            use ObjState::{Absent, Active, Disabled, Revoked};
            Some(match (input, state) {
                (RegInput::Create(_), Absent) => (Active, RegOutput::Created),
                (RegInput::Create(_), _) => (state.clone(), RegOutput::AlreadyExists),
                (RegInput::Disable(_) | RegInput::Enable(_) | RegInput::Revoke(_), Absent) => {
                    (Absent, RegOutput::NotFound)
                }
                (RegInput::Disable(_), Active | Disabled) => (Disabled, RegOutput::Done),
                (RegInput::Enable(_), Active | Disabled) => (Active, RegOutput::Done),
                (RegInput::Revoke(_), Active | Revoked) => (Revoked, RegOutput::Done),
                (RegInput::Disable(_) | RegInput::Enable(_), Revoked) | (RegInput::Revoke(_), Disabled) => return None,
                (RegInput::Read(_), _) => (state.clone(), RegOutput::Observed(state.clone())),
            })
        }
    }

    impl Model for Registry {
        type State = ObjState;
        type Input = RegInput;
        type Output = RegOutput;

        fn init(&self) -> ObjState {
            ObjState::Absent
        }

        /// With a known output, the output must be the one [`Registry::expected`] prescribes. With an unknown one,
        /// every operation is applicable and moves to the state it prescribes (an operation with no legal answer
        /// leaves the state unchanged).
        fn step(&self, state: &ObjState, input: &RegInput, output: Option<&RegOutput>) -> Option<ObjState> {
            let expected = Self::expected(state, input);
            match output {
                None => Some(expected.map_or_else(|| state.clone(), |(next, _)| next)),
                Some(output) => expected.filter(|(_, answer)| answer == output).map(|(next, _)| next),
            }
        }

        fn partition(&self, input: &RegInput) -> String {
            input.object().to_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::example::*;
    use super::*;

    type Op = Operation<RegInput, RegOutput>;

    fn op(client: usize, input: RegInput, invoke: u64, complete: u64, output: RegOutput) -> Op {
        Operation { client, input, invoke, complete: Some((complete, output)) }
    }

    fn unknown(client: usize, input: RegInput, invoke: u64) -> Op {
        Operation { client, input, invoke, complete: None }
    }

    fn create(name: &str) -> RegInput {
        RegInput::Create(name.to_owned())
    }

    fn read(name: &str) -> RegInput {
        RegInput::Read(name.to_owned())
    }

    fn revoke(name: &str) -> RegInput {
        RegInput::Revoke(name.to_owned())
    }

    fn observed(state: ObjState) -> RegOutput {
        RegOutput::Observed(state)
    }

    const BUDGET: u64 = 100_000;

    fn illegal(verdict: Verdict) -> (String, String) {
        match verdict {
            Verdict::Illegal { partition, explanation } => (partition, explanation),
            other => panic!("expected a violation, got {other:?}"),
        }
    }

    #[test]
    fn sequential_history_passes() {
        let u = "user:alice";
        let history = vec![
            op(0, read(u), 0, 1, observed(ObjState::Absent)),
            op(0, create(u), 2, 3, RegOutput::Created),
            op(1, create(u), 4, 5, RegOutput::AlreadyExists),
            op(0, RegInput::Disable(u.to_owned()), 6, 7, RegOutput::Done),
            op(1, read(u), 8, 9, observed(ObjState::Disabled)),
            op(0, RegInput::Enable(u.to_owned()), 10, 11, RegOutput::Done),
            op(1, read(u), 12, 13, observed(ObjState::Active)),
            op(1, revoke("key:1"), 14, 15, RegOutput::NotFound),
        ];
        assert_eq!(check(&Registry, &history, BUDGET), Verdict::Ok);
        assert!(check(&Registry, &[], BUDGET).is_ok());
    }

    #[test]
    fn concurrent_create_and_reads_can_be_ordered() {
        let k = "key:1";
        let history = vec![
            op(0, create(k), 0, 10, RegOutput::Created),
            // Listed before the create linearizes, then after it, although invoked in the other order.
            op(2, read(k), 2, 12, observed(ObjState::Active)),
            op(1, read(k), 3, 5, observed(ObjState::Absent)),
            op(3, revoke(k), 4, 20, RegOutput::Done),
            op(1, read(k), 6, 8, observed(ObjState::Active)),
            op(2, read(k), 13, 21, observed(ObjState::Revoked)),
        ];
        assert_eq!(check(&Registry, &history, BUDGET), Verdict::Ok);
    }

    #[test]
    fn stale_read_is_illegal_with_an_explanation() {
        let k = "key:7";
        let history = vec![
            op(0, create(k), 0, 10, RegOutput::Created),
            op(0, revoke(k), 20, 30, RegOutput::Done),
            op(1, read(k), 40, 50, observed(ObjState::Active)),
        ];
        let (partition, explanation) = illegal(check(&Registry, &history, BUDGET));
        assert_eq!(partition, k);
        assert!(explanation.contains("longest linearizable prefix: 2 operations"), "{explanation}");
        assert!(explanation.contains("#1 client 0 [20 .. 30] Revoke(\"key:7\") -> Done  => Revoked"), "{explanation}");
        assert!(explanation.contains("state after the prefix: Revoked"), "{explanation}");
        assert!(
            explanation.contains("#2 client 1 [40 .. 50] Read(\"key:7\") -> Observed(Active): not allowed from state"),
            "{explanation}"
        );
        let shown = Verdict::Illegal { partition, explanation }.to_string();
        assert!(shown.starts_with("not linearizable (partition \"key:7\")"), "{shown}");
    }

    #[test]
    fn unknown_create_may_or_may_not_take_effect() {
        let u = "user:bob";
        let active = vec![
            unknown(0, create(u), 0),
            op(1, read(u), 10, 11, observed(ObjState::Active)),
            op(2, read(u), 20, 21, observed(ObjState::Active)),
        ];
        assert_eq!(check(&Registry, &active, BUDGET), Verdict::Ok);

        let absent = vec![
            unknown(0, create(u), 0),
            op(1, read(u), 10, 11, observed(ObjState::Absent)),
            op(2, read(u), 20, 21, observed(ObjState::Absent)),
        ];
        assert_eq!(check(&Registry, &absent, BUDGET), Verdict::Ok);

        // Taking effect late is fine too.
        let late = vec![
            unknown(0, create(u), 0),
            op(1, read(u), 10, 11, observed(ObjState::Absent)),
            op(2, read(u), 20, 21, observed(ObjState::Active)),
        ];
        assert_eq!(check(&Registry, &late, BUDGET), Verdict::Ok);

        let flapping = vec![
            unknown(0, create(u), 0),
            op(1, read(u), 10, 11, observed(ObjState::Active)),
            op(2, read(u), 20, 21, observed(ObjState::Absent)),
        ];
        let (partition, explanation) = illegal(check(&Registry, &flapping, BUDGET));
        assert_eq!(partition, u);
        assert!(explanation.contains("1 more with unknown outcome"), "{explanation}");
        assert!(explanation.contains("-> outcome unknown  => Active"), "{explanation}");
    }

    #[test]
    fn unknown_op_invoked_after_a_read_cannot_explain_it() {
        let u = "user:carol";
        let history = vec![op(1, read(u), 0, 5, observed(ObjState::Active)), unknown(0, create(u), 6)];
        illegal(check(&Registry, &history, BUDGET));
    }

    #[test]
    fn equal_timestamps_mean_concurrent() {
        let u = "user:dave";
        let touching =
            vec![op(0, create(u), 0, 5, RegOutput::Created), op(1, read(u), 5, 6, observed(ObjState::Absent))];
        assert_eq!(check(&Registry, &touching, BUDGET), Verdict::Ok);

        let after = vec![op(0, create(u), 0, 5, RegOutput::Created), op(1, read(u), 6, 7, observed(ObjState::Absent))];
        illegal(check(&Registry, &after, BUDGET));
    }

    #[test]
    fn independent_partitions_name_the_bad_one() {
        let history = vec![
            op(0, create("user:a"), 0, 10, RegOutput::Created),
            op(1, create("user:b"), 0, 10, RegOutput::Created),
            op(0, read("user:a"), 20, 30, observed(ObjState::Active)),
            op(1, read("user:b"), 20, 30, observed(ObjState::Absent)),
        ];
        let (partition, explanation) = illegal(check(&Registry, &history, BUDGET));
        assert_eq!(partition, "user:b");
        assert!(explanation.contains("#3 client 1"), "{explanation}");
        assert!(!explanation.contains("user:a"), "{explanation}");

        let each = check_partitions(&Registry, &history, BUDGET);
        assert_eq!(each.len(), 2);
        assert_eq!(each[0], ("user:a".to_owned(), Verdict::Ok));
        assert!(matches!(&each[1], (key, Verdict::Illegal { .. }) if key == "user:b"));
    }

    #[test]
    fn tiny_budget_times_out() {
        // 200 operations on one object, all overlapping: the reads that saw the key absent were invoked
        // before the create, the others after it.
        let k = "key:busy";
        let mut history = Vec::new();
        for client in 0..200 {
            let invoke = client as u64;
            if client == 100 {
                history.push(op(client, create(k), invoke, 1000, RegOutput::Created));
            } else {
                let seen = if client < 100 { ObjState::Absent } else { ObjState::Active };
                history.push(op(client, read(k), invoke, 1000 + invoke, observed(seen)));
            }
        }
        assert_eq!(check(&Registry, &history, 1), Verdict::Timeout { partition: k.to_owned() });
        assert_eq!(check(&Registry, &history, 0), Verdict::Timeout { partition: k.to_owned() });
        assert_eq!(check(&Registry, &history, BUDGET), Verdict::Ok);
    }

    #[test]
    fn violation_wins_over_timeout() {
        let mut history: Vec<Op> =
            (0..50).map(|c| op(c, read("key:a"), c as u64, 100, observed(ObjState::Absent))).collect();
        history.push(op(0, read("key:b"), 0, 1, observed(ObjState::Active)));
        let (partition, _) = illegal(check(&Registry, &history, 5));
        assert_eq!(partition, "key:b");
    }

    #[test]
    fn bitset_keys_are_canonical() {
        let mut rng = Rng(9);
        let mut bits = Bitset::new(300);
        let mut members = vec![false; 300];
        for _ in 0..20_000 {
            let bit = rng.below(300) as usize;
            let member = rng.below(2) == 0;
            if member {
                bits.set(bit);
            } else {
                bits.clear(bit);
            }
            members[bit] = member;
            let mut fresh = Bitset::new(300);
            for (member, _) in members.iter().enumerate().filter(|(_, &member)| member) {
                fresh.set(member);
            }
            assert!(bits.key() == fresh.key());
            assert_eq!(bits.key().end, members.iter().rposition(|&member| member).map_or(0, |last| last + 1));
        }
    }

    #[test]
    fn model_is_strict_about_kinds() {
        let disabled = ObjState::Disabled;
        assert_eq!(Registry.step(&disabled, &revoke("x"), Some(&RegOutput::Done)), None);
        assert_eq!(Registry.step(&disabled, &revoke("x"), None), Some(ObjState::Disabled));
        let revoked = ObjState::Revoked;
        assert_eq!(Registry.step(&revoked, &revoke("x"), Some(&RegOutput::Done)), Some(ObjState::Revoked));
        assert_eq!(Registry.step(&revoked, &create("x"), None), Some(ObjState::Revoked));
        assert_eq!(Registry.step(&ObjState::Absent, &create("x"), None), Some(ObjState::Active));
    }

    #[test]
    fn long_sequential_partition_does_not_overflow() {
        let u = "user:long";
        let mut history = vec![op(0, create(u), 0, 1, RegOutput::Created)];
        for i in 1..30_000u64 {
            let (input, output) = if i % 2 == 1 {
                (RegInput::Disable(u.to_owned()), RegOutput::Done)
            } else {
                (read(u), observed(ObjState::Disabled))
            };
            history.push(op((i % 4) as usize, input, 2 * i, 2 * i + 1, output));
        }
        assert_eq!(check(&Registry, &history, 1_000_000), Verdict::Ok);
    }

    /// SplitMix64: a tiny deterministic generator.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Simulates a correct registry: each operation takes effect at a random instant within its interval (or,
    /// when its outcome is unknown, possibly later or never).
    fn simulate(seed: u64, count: usize, objects: u64, clients: usize, unknown_percent: u64) -> Vec<Op> {
        let mut rng = Rng(seed);
        let mut cursor = vec![0u64; clients];
        // (linearization instant or None if it never takes effect, completion time, op without its outcome)
        let mut planned = Vec::with_capacity(count);
        for _ in 0..count {
            let client = rng.below(clients as u64) as usize;
            let object = rng.below(objects);
            let is_user = object < objects / 2;
            let name = if is_user { format!("user:{object}") } else { format!("key:{object}") };
            let input = match (is_user, rng.below(6)) {
                (_, 0) => RegInput::Create(name),
                (true, 1 | 2) => RegInput::Disable(name),
                (true, 3) => RegInput::Enable(name),
                (false, 1) => RegInput::Revoke(name),
                _ => RegInput::Read(name),
            };
            let invoke = cursor[client] + rng.below(50);
            let is_unknown = rng.below(100) < unknown_percent;
            let (at, complete) = if is_unknown {
                cursor[client] = invoke + 300;
                let at = (rng.below(2) == 0).then(|| invoke + rng.below(600));
                (at, None)
            } else {
                let at = invoke + rng.below(100);
                let complete = at + rng.below(100);
                cursor[client] = complete + 1;
                (Some(at), Some(complete))
            };
            planned.push((at, complete, Operation { client, input, invoke, complete: None }));
        }
        let mut order: Vec<usize> = (0..planned.len()).filter(|&i| planned[i].0.is_some()).collect();
        order.sort_by_key(|&i| (planned[i].0, i));
        let mut states: BTreeMap<String, ObjState> = BTreeMap::new();
        let mut outputs: Vec<Option<RegOutput>> = vec![None; planned.len()];
        for i in order {
            let input = &planned[i].2.input;
            let state = states.entry(input.object().to_owned()).or_insert(ObjState::Absent);
            let (next, output) = Registry::expected(state, input).expect("kinds are never mixed");
            *state = next;
            outputs[i] = Some(output);
        }
        planned
            .into_iter()
            .zip(outputs)
            .map(|((_, complete, mut operation), output)| {
                operation.complete = complete.zip(output);
                operation
            })
            .collect()
    }

    /// Whether some order of all the known operations and some of the unknown ones respects real time and the
    /// model, by trying every order.
    fn brute_force(history: &[Op], state: &ObjState, done: &mut Vec<bool>) -> bool {
        if history.iter().zip(done.iter()).all(|(op, &done)| done || op.complete.is_none()) {
            return true;
        }
        for i in 0..history.len() {
            let preceded = (0..history.len())
                .any(|j| !done[j] && history[j].complete.as_ref().is_some_and(|(at, _)| *at < history[i].invoke));
            if done[i] || preceded {
                continue;
            }
            if let Some(next) = Registry.step(state, &history[i].input, history[i].output()) {
                done[i] = true;
                let found = brute_force(history, &next, done);
                done[i] = false;
                if found {
                    return true;
                }
            }
        }
        false
    }

    #[test]
    fn agrees_with_brute_force() {
        let mut rng = Rng(42);
        let states = [ObjState::Absent, ObjState::Active, ObjState::Disabled, ObjState::Revoked];
        let (mut legal, mut illegal) = (0, 0);
        for _ in 0..20_000 {
            let count = 1 + rng.below(6) as usize;
            let history: Vec<Op> = (0..count)
                .map(|client| {
                    let name = "x".to_owned();
                    let (input, outputs) = match rng.below(6) {
                        0 => (RegInput::Create(name), vec![RegOutput::Created, RegOutput::AlreadyExists]),
                        1 => (RegInput::Disable(name), vec![RegOutput::Done, RegOutput::NotFound]),
                        2 => (RegInput::Enable(name), vec![RegOutput::Done, RegOutput::NotFound]),
                        3 => (RegInput::Revoke(name), vec![RegOutput::Done, RegOutput::NotFound]),
                        _ => (RegInput::Read(name), states.iter().cloned().map(RegOutput::Observed).collect()),
                    };
                    let invoke = rng.below(8);
                    let complete = (rng.below(4) != 0).then(|| {
                        let output = outputs[rng.below(outputs.len() as u64) as usize].clone();
                        (invoke + rng.below(5), output)
                    });
                    Operation { client, input, invoke, complete }
                })
                .collect();
            let expected = brute_force(&history, &ObjState::Absent, &mut vec![false; count]);
            let verdict = check(&Registry, &history, BUDGET);
            assert_eq!(verdict.is_ok(), expected, "{history:#?}\n{verdict}");
            if expected {
                legal += 1;
            } else {
                illegal += 1;
            }
        }
        assert!(legal > 1_000 && illegal > 1_000, "{legal} legal, {illegal} illegal");
    }

    #[test]
    fn simulated_correct_registry_passes() {
        for seed in 1..=3 {
            let history = simulate(seed, 2_000, 20, 8, 5);
            assert!(history.iter().any(|op| op.complete.is_none()));
            assert_eq!(check(&Registry, &history, 20_000), Verdict::Ok, "seed {seed}");
        }
    }

    #[test]
    fn simulated_registry_with_many_unknown_outcomes_passes() {
        let history = simulate(4, 2_000, 20, 8, 30);
        assert_eq!(check(&Registry, &history, 20_000), Verdict::Ok);
    }

    #[test]
    fn simulated_long_run_passes() {
        // 5,000 operations per object.
        let history = simulate(5, 20_000, 4, 8, 5);
        assert_eq!(check(&Registry, &history, 200_000), Verdict::Ok);
    }

    #[test]
    fn unknown_disable_takes_effect_once() {
        let u = "user:erin";
        let disable = RegInput::Disable(u.to_owned());
        let mut history = vec![
            op(0, create(u), 0, 1, RegOutput::Created),
            unknown(0, disable, 2),
            op(1, read(u), 10, 11, observed(ObjState::Active)),
            op(2, read(u), 12, 13, observed(ObjState::Active)),
            op(1, read(u), 14, 15, observed(ObjState::Disabled)),
            op(2, read(u), 16, 17, observed(ObjState::Disabled)),
        ];
        assert_eq!(check(&Registry, &history, BUDGET), Verdict::Ok);

        history.push(op(1, read(u), 18, 19, observed(ObjState::Active)));
        let (_, explanation) = illegal(check(&Registry, &history, BUDGET));
        assert!(explanation.contains("longest linearizable prefix: 6 operations"), "{explanation}");
        assert!(explanation.contains("#6 client 1 [18 .. 19] Read(\"user:erin\") -> Observed(Active): not allowed"));
    }

    #[test]
    fn simulated_registry_with_a_forged_read_fails() {
        let mut history = simulate(7, 2_000, 20, 8, 5);
        // Users are never revoked.
        history.push(op(99, read("user:4"), 5_000, 5_100, observed(ObjState::Revoked)));
        let (partition, explanation) = illegal(check(&Registry, &history, 20_000));
        assert_eq!(partition, "user:4");
        assert!(explanation.contains("client 99"), "{explanation}");
    }
}
