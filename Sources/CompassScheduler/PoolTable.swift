/// The pools, by name, in an array that only grows (pools are never removed): a pool's index
/// holds for the life of the scheduler. A lookup by name compares the name with each pool's in
/// turn while there are few pools (a handful in practice: comparing two short names costs a few
/// instructions, hashing one about 500, and a batch looked its pool up about ten times on its
/// way through), and hashes it once there are more.
///
/// Reads and writes by name keep a dictionary's shape (`pools[name]`, `index(forKey:)`, `values`).
/// Nothing here is `private` (PoolQueue says why).
struct PoolTable {
    /// Pool names, by index.
    var keys: [String] = []
    /// Pool states, by index; read and written in place (`values[index].field`).
    var values: [PoolState] = []
    /// The index of each name, for lookups past `scanLimit` pools.
    var indices: [String: Int] = [:]

    /// Up to this many pools, a name is found by comparing it with each.
    static var scanLimit: Int { 8 }

    var count: Int { keys.count }

    /// The index of pool `name`, if there is one.
    func index(forKey name: String) -> Int? {
        if keys.count <= Self.scanLimit {
            for i in keys.indices where keys[i] == name { return i }
            return nil
        }
        return indices[name]
    }

    /// Adds pool `name` (not yet there); returns its index.
    @discardableResult
    mutating func add(_ name: String, _ state: PoolState = PoolState()) -> Int {
        keys.append(name)
        values.append(state)
        indices[name] = keys.count - 1
        return keys.count - 1
    }

    /// A pool by name, as a dictionary has it. Writing nil is not allowed: pools stay.
    subscript(name: String) -> PoolState? {
        get { index(forKey: name).map { values[$0] } }
        _modify {
            if let i = index(forKey: name) {
                var state: PoolState? = PoolState()
                swap(&state!, &values[i])
                defer {
                    precondition(state != nil, "pools are never removed")
                    swap(&state!, &values[i])
                }
                yield &state
            } else {
                var state: PoolState? = nil
                defer { if let added = state { add(name, added) } }
                yield &state
            }
        }
    }
}

extension PoolTable: Sequence {
    /// The pools as (name, state) pairs, in the order they were added.
    func makeIterator() -> Zip2Sequence<[String], [PoolState]>.Iterator { zip(keys, values).makeIterator() }
}
