/// A batch's place in the `BatchTable`: its slot, and the slot's generation when the batch took
/// it. Slots are reused once their batch is forgotten, so an entry left behind (the pool queue
/// removes lazily) names an older generation and is told apart from the slot's new batch.
struct BatchRef: Equatable {
    let slot: Int
    let generation: UInt32
}

/// The batches the scheduler holds, interned: each batch id is looked up once, where a message
/// names it, and the scheduler reaches the record after that by its slot in an array (the pool
/// queue holds slots, dispatch and finishing go by slot), not by hashing the id again at every
/// step. Hashing a batch id and probing a dictionary cost about 500 instructions each time, and
/// a batch was looked up by id about a dozen times on its way through (README, "A ceiling for the
/// broker"). Reads and writes by id keep a dictionary's shape (`table[id]`, `removeValue`), for
/// the paths that are not per batch.
///
/// Nothing here is `private` (PoolQueue says why).
struct BatchTable<Payload: BatchPayload> {
    /// The slot of each batch id.
    var slots: [String: Int] = [:]
    /// The records by slot; nil in a free slot.
    var records: [BatchRecord<Payload>?] = []
    /// Bumped each time a slot is freed.
    var generations: [UInt32] = []
    /// Free slots, reused last-freed first.
    var free: [Int] = []

    var count: Int { slots.count }
    var isEmpty: Bool { slots.isEmpty }

    /// The slot of batch `id`, if the table holds it.
    func index(forKey id: String) -> Int? { slots[id] }

    /// The reference of the batch in `slot` (held).
    func ref(_ slot: Int) -> BatchRef { BatchRef(slot: slot, generation: generations[slot]) }

    /// The batch in `slot`, which must be held; read and written in place.
    subscript(slot slot: Int) -> BatchRecord<Payload> {
        get { records[slot]! }
        _modify { yield &records[slot]! }
    }

    /// Whether `ref` still names the batch in its slot.
    func holds(_ ref: BatchRef) -> Bool {
        ref.slot < generations.count && generations[ref.slot] == ref.generation && records[ref.slot] != nil
    }

    /// Adds a batch whose id the table does not hold; returns its slot.
    @discardableResult
    mutating func insert(_ record: BatchRecord<Payload>) -> Int {
        let slot: Int
        if let reused = free.popLast() {
            slot = reused
            records[slot] = record
        } else {
            slot = records.count
            records.append(record)
            generations.append(0)
        }
        slots[record.id] = slot
        return slot
    }

    /// Removes the batch in `slot` (held) and returns it.
    @discardableResult
    mutating func remove(at slot: Int) -> BatchRecord<Payload> {
        // Moved out of the array, not copied (a copy retains and releases every field).
        let record = records[slot].take()!
        slots[record.id] = nil
        generations[slot] &+= 1
        free.append(slot)
        return record
    }

    mutating func removeValue(forKey id: String) -> BatchRecord<Payload>? {
        guard let slot = slots[id] else { return nil }
        return remove(at: slot)
    }

    /// A batch by id, as a dictionary has it: reading copies the record; writing nil removes it.
    subscript(id: String) -> BatchRecord<Payload>? {
        get { slots[id].map { records[$0]! } }
        _modify {
            if let slot = slots[id] {
                // Moved out and back: no copy of the record while it is changed.
                var record: BatchRecord<Payload>? = nil
                swap(&record, &records[slot])
                defer {
                    if let kept = record {
                        precondition(kept.id == id, "a batch's record keeps its id")
                        records[slot] = kept
                    } else {
                        // Put back for `remove`, which takes it out again.
                        records[slot] = nil
                        slots[id] = nil
                        generations[slot] &+= 1
                        free.append(slot)
                    }
                }
                yield &record
            } else {
                var record: BatchRecord<Payload>? = nil
                defer {
                    if let added = record {
                        precondition(added.id == id, "a batch is filed under its own id")
                        insert(added)
                    }
                }
                yield &record
            }
        }
    }

    /// The ids held, in no particular order.
    var keys: [String] { Array(slots.keys) }
}

extension BatchTable: Sequence {
    /// The batches held as (id, record) pairs, in slot order.
    func makeIterator() -> AnyIterator<(key: String, value: BatchRecord<Payload>)> {
        var it = records.makeIterator()
        return AnyIterator {
            while let next = it.next() {
                if let record = next { return (record.id, record) }
            }
            return nil
        }
    }
}
