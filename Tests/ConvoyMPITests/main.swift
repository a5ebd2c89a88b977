// The MPI backend's tests. MPI_Init may run only once per process, so these are an executable run under
// `mpirun -np N .build/release/ConvoyMPITests` (scripts/test runs N = 2, 3, 4) rather than Swift Testing cases.
//
// Every operation × dtype × count is checked against a reference each rank computes locally from the
// deterministic data of every rank. Each rank prints its own failures; rank 0 sums the tallies over the world
// (an MPI reduction) and prints the closing line "N passed, N failed". The exit status is non-zero if anything
// failed anywhere.

import ConvoyComm
import ConvoyTensor
import Foundation

exit(MPIBackendSuite().run())

/// Writes a line straight to standard output (unbuffered, so mpirun forwards lines from all ranks whole and
/// nothing is lost at exit).
func say(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

/// Element `index` of `rank`'s data for case `salt`: small integers, so sums, maxima and minima are exact in
/// Float32 and BFloat16 alike and any wrong element shows.
func value(rank: Int, index: Int, salt: Int) -> Float {
    Float((rank &* 131 &+ index &* 31 &+ salt &* 17) % 41 - 20)
}

/// Owned memory of `count` elements of `dtype`, read and written as Float.
final class TestBuffer {
    let count: Int
    let dtype: DType
    let memory: UnsafeMutableRawPointer?

    init(_ dtype: DType, count: Int, fill: (Int) -> Float = { _ in .nan }) {
        self.count = count
        self.dtype = dtype
        // An empty buffer has no memory: the backend must cope with a nil pointer.
        memory = count == 0 ? nil : UnsafeMutableRawPointer.allocate(byteCount: count * dtype.byteSize, alignment: 64)
        for index in 0..<count { self[index] = fill(index) }
    }

    deinit { memory?.deallocate() }

    subscript(index: Int) -> Float {
        get {
            switch dtype {
            case .float32: return memory!.load(fromByteOffset: index * 4, as: Float.self)
            case .bfloat16: return BFloat16(bitPattern: memory!.load(fromByteOffset: index * 2, as: UInt16.self)).floatValue
            }
        }
        set {
            switch dtype {
            case .float32: memory!.storeBytes(of: newValue, toByteOffset: index * 4, as: Float.self)
            case .bfloat16: memory!.storeBytes(of: BFloat16(newValue).bitPattern, toByteOffset: index * 2, as: UInt16.self)
            }
        }
    }

    var buffer: CommunicationBuffer { CommunicationBuffer(pointer: memory, count: count, dtype: dtype) }
}

final class MPIBackendSuite {
    private var passed = 0
    private var failed = 0
    private var rank = 0
    private var size = 1

    func run() -> Int32 {
        // Generous for a test, but a bug fails in a minute rather than the production default's five.
        if ProcessInfo.processInfo.environment["CONVOY_COMM_TIMEOUT"] == nil { CommunicationTimeout.set(60) }
        let runtime: MPIRuntime
        do {
            runtime = try MPIRuntime.initialize()
        } catch {
            say("MPI initialization failed: \(error)")
            return 1
        }
        let world = runtime.worldGroup()
        rank = world.rank
        size = world.size
        check(MPIRuntime.isLaunchedByMPI || size == 1, "runtime: isLaunchedByMPI under mpirun", "OMPI_COMM_WORLD_SIZE/RANK not seen")
        check(try MPIRuntime.initialize() === runtime, "runtime: initialize() is idempotent")
        check(runtime.worldGroup() === world && world.name == "world" && world.worldRanks == Array(0..<size),
              "runtime: world group", "name \(world.name), worldRanks \(world.worldRanks)")
        if rank == 0 { say("ConvoyMPITests: \(size) ranks, thread level \(runtime.threadLevel)") }

        let counts = [0, 1, 7, max(size - 1, 0), (1 << 20) + 3]
        for dtype in DType.allCases {
            for count in counts {
                testAllReduce(world, dtype: dtype, count: count)
                testReduceScatter(world, dtype: dtype, count: count)
                testAllGather(world, dtype: dtype, count: count)
                testBroadcast(world, dtype: dtype, count: count)
                testSendReceiveRing(world, dtype: dtype, count: count)
            }
        }
        testBarrierAndIssueOrder(world)
        testSameBufferTwice(world)
        testSplit(world)
        testTwoGroupsInFlight(world)
        testRejectedArguments(world)
        testMPIErrorsComeBack(world)
        testReceiveTimeout(world)
        testCollectiveTimeout(world)
        testDebugModeChangesNoResults(world)
        testDebugModeCatchesMismatches(world)
        testDebugModeTimeout(world)
        testDataParallelMatchesOneProcess(world)
        testPipelineMatchesOneProcess(world)
        testProbeFromAnySource(world)
        testParameterServerMatchesOneProcess(world)
        testParameterServerCheckpointsAcrossProcesses(world)
        testTensorParallelMatchesOneProcess(world)

        // Sum the tallies over the world; rank 0 reports.
        let totals = TestBuffer(.float32, count: 2) { $0 == 0 ? Float(passed) : Float(failed) }
        do {
            try world.allReduce(totals.buffer, operation: .sum)
        } catch {
            say("FAIL [rank \(rank)] gathering the results: \(error)")
            return 1
        }
        let failedEverywhere = Int(totals[1])
        if rank == 0 { say("\(Int(totals[0])) passed, \(failedEverywhere) failed") }
        runtime.finalize()
        return failedEverywhere == 0 ? 0 : 1
    }

    // MARK: Recording

    func check(_ condition: @autoclosure () throws -> Bool, _ label: String, _ detail: @autoclosure () -> String = "") {
        do {
            if try condition() {
                passed += 1
            } else {
                fail(label, detail())
            }
        } catch {
            fail(label, "threw \(error)")
        }
    }

    private func fail(_ label: String, _ detail: String) {
        failed += 1
        say("FAIL [rank \(rank)] \(label)\(detail.isEmpty ? "" : ": \(detail)")")
    }

    /// Runs `body`; a thrown error is a failure of `label`.
    private func attempt(_ label: String, _ body: () throws -> Void) -> Bool {
        do {
            try body()
            return true
        } catch {
            fail(label, "threw \(error)")
            return false
        }
    }

    /// Compares every element with `expected(index)`; exact unless `tolerance` (relative) is given.
    private func compare(_ buffer: TestBuffer, _ label: String, tolerance: Float = 0, expected: (Int) -> Float) {
        var mismatches = 0
        var first = ""
        for index in 0..<buffer.count {
            let want = expected(index), got = buffer[index]
            let ok = tolerance == 0 ? got == want : abs(got - want) <= tolerance * max(1, abs(want))
            if !ok {
                if mismatches == 0 { first = "element \(index) is \(got), expected \(want)" }
                mismatches += 1
            }
        }
        check(mismatches == 0, label, "\(mismatches) of \(buffer.count) elements wrong; first: \(first)")
    }

    // MARK: Collectives

    private func reference(_ operation: ReduceOperation, dtype: DType, ranks: Range<Int>, _ element: (Int) -> Float) -> Float {
        let values = ranks.map(element)
        switch operation {
        case .sum: return values.reduce(0, +)
        case .average:
            let mean = values.reduce(0, +) / Float(ranks.count)
            return dtype == .bfloat16 ? BFloat16(mean).floatValue : mean
        case .max: return values.max()!
        case .min: return values.min()!
        }
    }

    /// Averages divide by the size, so they may differ from the reference in the last bit (BFloat16: by one
    /// of its coarser steps); everything else is exact.
    private func tolerance(_ operation: ReduceOperation, _ dtype: DType) -> Float {
        operation != .average ? 0 : (dtype == .float32 ? 1e-6 : 1.0 / 128)
    }

    private func testAllReduce(_ group: MPIProcessGroup, dtype: DType, count: Int) {
        for (salt, operation) in ReduceOperation.allCases.enumerated() {
            let label = "all-reduce \(operation) \(dtype) count \(count)"
            let rank = self.rank
            let data = TestBuffer(dtype, count: count) { value(rank: rank, index: $0, salt: salt) }
            guard attempt(label, { try group.allReduceAsync(data.buffer, operation: operation).wait() }) else { continue }
            compare(data, label, tolerance: tolerance(operation, dtype)) { index in
                reference(operation, dtype: dtype, ranks: 0..<size) { value(rank: $0, index: index, salt: salt) }
            }
        }
    }

    private func testReduceScatter(_ group: MPIProcessGroup, dtype: DType, count: Int) {
        let chunk = ChunkLayout.range(total: count, parts: size, rank: rank)
        let rank = self.rank
        for (salt, operation) in ReduceOperation.allCases.enumerated() {
            let label = "reduce-scatter \(operation) \(dtype) count \(count)"
            let input = TestBuffer(dtype, count: count) { value(rank: rank, index: $0, salt: salt) }
            let output = TestBuffer(dtype, count: chunk.count)
            guard attempt(label, { try group.reduceScatterAsync(input: input.buffer, output: output.buffer, operation: operation).wait() }) else { continue }
            compare(output, label, tolerance: tolerance(operation, dtype)) { index in
                reference(operation, dtype: dtype, ranks: 0..<size) { value(rank: $0, index: chunk.lowerBound + index, salt: salt) }
            }
        }
        // In place, as ZeRO does it: the output is this rank's chunk of the input.
        let label = "reduce-scatter sum \(dtype) count \(count) in place"
        let data = TestBuffer(dtype, count: count) { value(rank: rank, index: $0, salt: 9) }
        guard attempt(label, { try group.reduceScatter(input: data.buffer, output: data.buffer.slice(chunk), operation: .sum) }) else { return }
        var mismatches = 0
        for index in chunk where data[index] != reference(.sum, dtype: dtype, ranks: 0..<size, { value(rank: $0, index: index, salt: 9) }) {
            mismatches += 1
        }
        check(mismatches == 0, label, "\(mismatches) of \(chunk.count) elements wrong")
    }

    private func testAllGather(_ group: MPIProcessGroup, dtype: DType, count: Int) {
        let chunk = ChunkLayout.range(total: count, parts: size, rank: rank)
        var owner = [Int](repeating: 0, count: count)
        for peer in 0..<size { for index in ChunkLayout.range(total: count, parts: size, rank: peer) { owner[index] = peer } }
        let rank = self.rank

        let label = "all-gather \(dtype) count \(count)"
        let input = TestBuffer(dtype, count: chunk.count) { value(rank: rank, index: chunk.lowerBound + $0, salt: 3) }
        let output = TestBuffer(dtype, count: count)
        if attempt(label, { try group.allGatherAsync(input: input.buffer, output: output.buffer).wait() }) {
            compare(output, label) { value(rank: owner[$0], index: $0, salt: 3) }
        }

        // In place: the input already sits in this rank's chunk of the output.
        let inPlaceLabel = label + " in place"
        let shared = TestBuffer(dtype, count: count) { chunk.contains($0) ? value(rank: rank, index: $0, salt: 4) : .nan }
        if attempt(inPlaceLabel, { try group.allGather(input: shared.buffer.slice(chunk), output: shared.buffer) }) {
            compare(shared, inPlaceLabel) { value(rank: owner[$0], index: $0, salt: 4) }
        }
    }

    private func testBroadcast(_ group: MPIProcessGroup, dtype: DType, count: Int) {
        let rank = self.rank
        for root in 0..<size {
            let label = "broadcast \(dtype) count \(count) root \(root)"
            let data = TestBuffer(dtype, count: count) { value(rank: rank, index: $0, salt: 5 + root) }
            guard attempt(label, { try group.broadcastAsync(data.buffer, root: root).wait() }) else { continue }
            compare(data, label) { value(rank: root, index: $0, salt: 5 + root) }
        }
    }

    // MARK: Point to point

    /// Each rank sends two tagged messages to the next rank and receives the previous rank's, posting the
    /// receives in the opposite tag order: tags, not order, must match them, and a send must not have to
    /// finish before the receive issued after it starts (rendezvous-sized messages would deadlock).
    private func testSendReceiveRing(_ group: MPIProcessGroup, dtype: DType, count: Int) {
        guard size > 1 else { return }
        let label = "send/receive ring \(dtype) count \(count)"
        let next = (rank + 1) % size, previous = (rank + size - 1) % size
        let rank = self.rank
        let first = TestBuffer(dtype, count: count) { value(rank: rank, index: $0, salt: 11) }
        let second = TestBuffer(dtype, count: count) { value(rank: rank, index: $0, salt: 12) }
        let intoFirst = TestBuffer(dtype, count: count), intoSecond = TestBuffer(dtype, count: count)
        let works = [
            group.receiveAsync(intoSecond.buffer, from: previous, tag: 12),
            group.receiveAsync(intoFirst.buffer, from: previous, tag: 11),
            group.sendAsync(first.buffer, to: next, tag: 11),
            group.sendAsync(second.buffer, to: next, tag: 12),
        ]
        guard attempt(label, { try works.forEach { try $0.wait() } }) else { return }
        compare(intoFirst, label + " tag 11") { value(rank: previous, index: $0, salt: 11) }
        compare(intoSecond, label + " tag 12") { value(rank: previous, index: $0, salt: 12) }
    }

    // MARK: Ordering

    /// Handles complete in issue order: once the last of a burst has completed, all earlier ones have.
    private func testBarrierAndIssueOrder(_ group: MPIProcessGroup) {
        let label = "barrier and issue order"
        let rank = self.rank
        let big = TestBuffer(.float32, count: 1 << 20) { value(rank: rank, index: $0, salt: 20) }
        let small = TestBuffer(.bfloat16, count: 5) { value(rank: rank, index: $0, salt: 21) }
        let works = [
            group.barrierAsync(),
            group.allReduceAsync(big.buffer, operation: .max),
            group.broadcastAsync(small.buffer, root: size - 1),
            group.barrierAsync(),
        ]
        guard attempt(label, { try works.last!.wait() }) else { return }
        check(works.allSatisfy { $0.isCompleted && $0.error == nil }, label, "earlier work not complete when the last was: \(works.map(\.isCompleted))")
        compare(small, label + " broadcast") { value(rank: self.size - 1, index: $0, salt: 21) }
    }

    /// Two all-reduces on one buffer, issued without waiting, act one after the other (the second sums the
    /// first's result).
    private func testSameBufferTwice(_ group: MPIProcessGroup) {
        let label = "two all-reduces on one buffer in flight"
        let rank = self.rank
        for dtype in DType.allCases {
            let data = TestBuffer(dtype, count: 1000) { value(rank: rank, index: $0, salt: 22) / 4 }
            let works = [group.allReduceAsync(data.buffer, operation: .sum), group.allReduceAsync(data.buffer, operation: .sum)]
            guard attempt(label, { try works.forEach { try $0.wait() } }) else { continue }
            compare(data, "\(label) \(dtype)") { index in
                Float(self.size) * (0..<self.size).map { value(rank: $0, index: index, salt: 22) / 4 }.reduce(0, +)
            }
        }
    }

    // MARK: Groups

    private func testSplit(_ world: MPIProcessGroup) {
        // Colour by parity, keys reversing the order.
        let parity = rank % 2
        let members = (0..<size).filter { $0 % 2 == parity }.reversed().map { $0 }
        do {
            guard let group = try world.split(color: parity, key: -rank) else {
                fail("split by parity", "got nil for colour \(parity)")
                return
            }
            check(group.name == "world.split(\(parity))", "split: default name", "got \(group.name)")
            check(group.size == members.count && group.rank == members.firstIndex(of: rank)! && group.worldRanks == members,
                  "split by parity, key -rank", "size \(group.size) rank \(group.rank) worldRanks \(group.worldRanks); expected \(members)")
            let ranks = TestBuffer(.float32, count: 1) { _ in Float(self.rank) }
            try group.allReduce(ranks.buffer, operation: .sum)
            check(ranks[0] == Float(members.reduce(0, +)), "split: all-reduce within the sub-group", "sum of world ranks \(ranks[0])")

            // A split of a split, named explicitly.
            if let nested = try group.split(color: 0, key: group.rank, name: "inner") {
                check(nested.name == "inner" && nested.worldRanks == group.worldRanks, "split of a split", "\(nested.name) \(nested.worldRanks)")
                try nested.barrier()
            } else {
                fail("split of a split", "got nil")
            }
        } catch {
            fail("split by parity", "threw \(error)")
        }

        // A negative colour takes no part.
        do {
            let group = try world.split(color: rank == 0 ? -1 : 5, key: 0)
            if rank == 0 {
                check(group == nil, "split: negative colour gets nil")
            } else if let group {
                check(group.size == size - 1 && group.worldRanks == Array(1..<size), "split: colour 5 without rank 0", "\(group.worldRanks)")
                try group.barrier()
            } else {
                fail("split: colour 5 without rank 0", "got nil")
            }
        } catch {
            fail("split with a negative colour", "threw \(error)")
        }

        // Explicit rank lists (the protocol's subgroup, built on split).
        guard size > 1 else { return }
        do {
            let group = try world.subgroup(ranks: [size - 1, 0], name: "ends")
            if rank == 0 || rank == size - 1 {
                check(group?.worldRanks == [size - 1, 0] && group?.rank == (rank == 0 ? 1 : 0) && group?.name == "ends",
                      "subgroup(ranks:)", "\(String(describing: group?.worldRanks)) rank \(String(describing: group?.rank))")
            } else {
                check(group == nil, "subgroup(ranks:) excludes the others")
            }
        } catch {
            fail("subgroup(ranks:)", "threw \(error)")
        }
    }

    /// Work on the world and on a sub-group is in flight at the same time and both finish correctly.
    private func testTwoGroupsInFlight(_ world: MPIProcessGroup) {
        let label = "async work on two groups at once"
        do {
            guard let half = try world.split(color: rank % 2, key: rank) else { return fail(label, "split gave nil") }
            let count = (1 << 20) + 3
            let rank = self.rank
            let onWorld = TestBuffer(.float32, count: count) { value(rank: rank, index: $0, salt: 30) }
            let onHalf = TestBuffer(.bfloat16, count: count) { value(rank: rank, index: $0, salt: 31) }
            let small = TestBuffer(.float32, count: 3) { value(rank: rank, index: $0, salt: 32) }
            let works = [
                half.allReduceAsync(onHalf.buffer, operation: .sum),
                world.allReduceAsync(onWorld.buffer, operation: .sum),
                half.barrierAsync(),
                world.broadcastAsync(small.buffer, root: 0),
            ]
            for work in works.reversed() { try work.wait() }
            compare(onWorld, label + " (world)") { index in (0..<self.size).map { value(rank: $0, index: index, salt: 30) }.reduce(0, +) }
            compare(onHalf, label + " (sub-group)") { index in half.worldRanks.map { value(rank: $0, index: index, salt: 31) }.reduce(0, +) }
            compare(small, label + " (world broadcast)") { value(rank: 0, index: $0, salt: 32) }
        } catch {
            fail(label, "threw \(error)")
        }
    }

    // MARK: Errors

    private func expectError(_ work: Work, _ label: String, matches: (CommunicationError) -> Bool) {
        do {
            try work.wait(timeout: 30)
            fail(label, "succeeded, expected an error")
        } catch let error as CommunicationError {
            check(matches(error), label, "unexpected error: \(error)")
        } catch {
            fail(label, "unexpected error type: \(error)")
        }
    }

    private func isInvalidArgument(_ error: CommunicationError) -> Bool {
        if case .invalidArgument(let message) = error { return message.contains("world") }
        return false
    }

    /// Bad arguments are refused on the calling rank, at once, without disturbing the group.
    private func testRejectedArguments(_ group: MPIProcessGroup) {
        let floats = TestBuffer(.float32, count: 8), halves = TestBuffer(.bfloat16, count: 8)
        let chunk = ChunkLayout.range(total: 8, parts: size, rank: rank).count
        let wrongChunk = TestBuffer(.float32, count: chunk + 1)
        let cases: [(String, Work)] = [
            ("reduce-scatter with mismatched dtypes is rejected", group.reduceScatterAsync(input: floats.buffer, output: halves.buffer.slice(0..<chunk), operation: .sum)),
            ("reduce-scatter with a wrong output count is rejected", group.reduceScatterAsync(input: floats.buffer, output: wrongChunk.buffer, operation: .sum)),
            ("all-gather with mismatched dtypes is rejected", group.allGatherAsync(input: halves.buffer.slice(0..<chunk), output: floats.buffer)),
            ("all-gather with a wrong input count is rejected", group.allGatherAsync(input: wrongChunk.buffer, output: floats.buffer)),
            ("broadcast from a root outside the group is rejected", group.broadcastAsync(floats.buffer, root: size)),
            ("send to a rank outside the group is rejected", group.sendAsync(floats.buffer, to: -1, tag: 0)),
            ("receive with a negative tag is rejected", group.receiveAsync(floats.buffer, from: 0, tag: -1)),
        ]
        for (label, work) in cases {
            check(work.isCompleted, label + " (at once)")
            expectError(work, label, matches: isInvalidArgument)
        }
        // A message to or from the rank itself is refused (as the Local backend does), saying why.
        let toSelf: [(String, Work)] = [
            ("send to the rank itself is rejected", group.sendAsync(floats.buffer, to: rank, tag: 0)),
            ("receive from the rank itself is rejected", group.receiveAsync(floats.buffer, from: rank, tag: 0)),
        ]
        for (label, work) in toSelf {
            check(work.isCompleted, label + " (at once)")
            expectError(work, label) { error in
                guard case .invalidArgument(let message) = error else { return false }
                return message.contains("group 'world'") && message.contains("rank \(self.rank) is this rank itself")
            }
        }
        // The refusals took no part in the group's sequence: a collective still lines up across ranks.
        check(attempt("barrier after rejected calls") { try group.barrier() }, "group usable after rejected calls")
    }

    /// MPI's own errors come back as Swift errors with MPI's message (MPI_ERRORS_RETURN), not as an abort.
    private func testMPIErrorsComeBack(_ group: MPIProcessGroup) {
        guard size > 1 else { return }
        if rank == 0 {
            let long = TestBuffer(.float32, count: 8) { Float($0) }
            let short = TestBuffer(.float32, count: 2) { Float($0) }
            _ = attempt("send for the truncation test") { try group.send(long.buffer, to: 1, tag: 77) }
            _ = attempt("send for the short-message test") { try group.send(short.buffer, to: 1, tag: 78) }
        } else if rank == 1 {
            let tooSmall = TestBuffer(.float32, count: 4)
            expectError(group.receiveAsync(tooSmall.buffer, from: 0, tag: 77), "a message longer than the receive buffer is an MPI error") {
                if case .backend(let message) = $0 { return message.contains("TRUNCATE") && message.contains("receive #") }
                return false
            }
            let tooLarge = TestBuffer(.float32, count: 4)
            expectError(group.receiveAsync(tooLarge.buffer, from: 0, tag: 78), "a message shorter than the receive buffer is a count mismatch") {
                if case .mismatch(let message) = $0 { return message.contains("2 elements") }
                return false
            }
        }
        check(attempt("barrier after MPI errors") { try group.barrier() }, "group usable after MPI errors")
    }

    // MARK: Debug mode

    /// With the debug mode on, rank 0 skips a collective: the others time out in the descriptor exchange,
    /// which says so. Rank 0 joins late: its exchange completes against the others' abandoned one, and then
    /// its barrier times out alone, saying that every rank issued it.
    private func testDebugModeTimeout(_ world: MPIProcessGroup) {
        guard size > 1 else { return }
        withDebugMode {
            do {
                guard let victim = try world.split(color: 0, key: rank, name: "debug-victim") else { return fail("debug mode: timeout", "split gave nil") }
                let previous = CommunicationTimeout.seconds
                if rank != 0 {
                    CommunicationTimeout.set(1)
                    let work = victim.barrierAsync()
                    CommunicationTimeout.set(previous)
                    expectError(work, "debug mode: a collective a rank skips times out in the descriptor exchange") {
                        guard case .timedOut(let message) = $0 else { return false }
                        return message.contains("barrier #0 on group 'debug-victim'") && message.contains("exchanged descriptors")
                    }
                }
                try world.barrier()
                if rank == 0 {
                    CommunicationTimeout.set(1)
                    let work = victim.barrierAsync()
                    CommunicationTimeout.set(previous)
                    expectError(work, "debug mode: a late rank passes the check, then times out alone") {
                        guard case .timedOut(let message) = $0 else { return false }
                        return message.contains("barrier #0 on group 'debug-victim'") && message.contains("every rank of 'debug-victim' issued it")
                    }
                }
                try world.barrier()
            } catch {
                fail("debug mode: timeout", "threw \(error)")
            }
        }
    }

    /// Runs `body` with the collective debug mode on, restoring the previous setting afterwards.
    private func withDebugMode(_ body: () throws -> Void) rethrows {
        let previous = CollectiveDebugging.isEnabled
        CollectiveDebugging.set(true)
        defer { CollectiveDebugging.set(previous) }
        check(CollectiveDebugging.isEnabled, "debug mode: set(true) turns it on")
        try body()
    }

    /// With the debug mode on, matching collectives (a burst in flight together, sends and receives between
    /// them, a split) give exactly the results of the reference.
    private func testDebugModeChangesNoResults(_ world: MPIProcessGroup) {
        let label = "debug mode: matching collectives"
        let rank = self.rank, size = self.size
        withDebugMode {
            do {
                let count = 1001
                let reduced = TestBuffer(.float32, count: count) { value(rank: rank, index: $0, salt: 40) }
                let maxed = TestBuffer(.bfloat16, count: 13) { value(rank: rank, index: $0, salt: 41) }
                let scatterInput = TestBuffer(.float32, count: 37) { value(rank: rank, index: $0, salt: 42) }
                let chunk = ChunkLayout.range(total: 37, parts: size, rank: rank)
                let scattered = TestBuffer(.float32, count: chunk.count)
                let gatherChunk = ChunkLayout.range(total: 11, parts: size, rank: rank)
                let gatherInput = TestBuffer(.bfloat16, count: gatherChunk.count) { value(rank: rank, index: gatherChunk.lowerBound + $0, salt: 43) }
                let gathered = TestBuffer(.bfloat16, count: 11)
                let broadcasted = TestBuffer(.float32, count: 5) { value(rank: rank, index: $0, salt: 44) }
                let outgoing = TestBuffer(.float32, count: 9) { value(rank: rank, index: $0, salt: 45) }
                let incoming = TestBuffer(.float32, count: 9)
                let next = (rank + 1) % size, previous = (rank + size - 1) % size
                var works = [
                    world.allReduceAsync(reduced.buffer, operation: .sum),
                    world.allReduceAsync(maxed.buffer, operation: .max),
                ]
                if size > 1 {  // point-to-point work may start while a collective's check is in flight
                    works.append(world.receiveAsync(incoming.buffer, from: previous, tag: 46))
                    works.append(world.sendAsync(outgoing.buffer, to: next, tag: 46))
                }
                works += [
                    world.reduceScatterAsync(input: scatterInput.buffer, output: scattered.buffer, operation: .sum),
                    world.allGatherAsync(input: gatherInput.buffer, output: gathered.buffer),
                    world.broadcastAsync(broadcasted.buffer, root: size - 1),
                    world.barrierAsync(),
                ]
                for work in works { try work.wait() }
                compare(reduced, label + ": all-reduce sum") { index in (0..<size).map { value(rank: $0, index: index, salt: 40) }.reduce(0, +) }
                compare(maxed, label + ": all-reduce max") { index in (0..<size).map { value(rank: $0, index: index, salt: 41) }.max()! }
                compare(scattered, label + ": reduce-scatter") { index in
                    (0..<size).map { value(rank: $0, index: chunk.lowerBound + index, salt: 42) }.reduce(0, +)
                }
                var owner = [Int](repeating: 0, count: 11)
                for peer in 0..<size { for index in ChunkLayout.range(total: 11, parts: size, rank: peer) { owner[index] = peer } }
                compare(gathered, label + ": all-gather") { value(rank: owner[$0], index: $0, salt: 43) }
                compare(broadcasted, label + ": broadcast") { value(rank: size - 1, index: $0, salt: 44) }
                if size > 1 { compare(incoming, label + ": send/receive") { value(rank: previous, index: $0, salt: 45) } }

                // A split is checked too, and the new group works.
                if let half = try world.split(color: rank % 2, key: rank, name: "debug-half") {
                    let ranks = TestBuffer(.float32, count: 1) { _ in Float(rank) }
                    try half.allReduce(ranks.buffer, operation: .sum)
                    check(ranks[0] == Float(half.worldRanks.reduce(0, +)), label + ": split and all-reduce in the sub-group", "got \(ranks[0])")
                } else {
                    fail(label + ": split", "got nil")
                }
            } catch {
                fail(label, "threw \(error)")
            }
        }
    }

    /// With the debug mode on, ranks that issue different collectives all get a mismatch error naming the
    /// group, the sequence number and both sides; the data is untouched (the real collective never started)
    /// and the group refuses further work. Each case uses a fresh group, since a mismatch breaks it.
    private func testDebugModeCatchesMismatches(_ world: MPIProcessGroup) {
        guard size > 1 else { return }
        let rank = self.rank
        withDebugMode {
            do {
                // Rank 0 all-reduces 10 elements, the others 12.
                guard let countGroup = try world.split(color: 0, key: rank, name: "debug-count") else { return fail("debug mode: count mismatch", "split gave nil") }
                let count = rank == 0 ? 10 : 12
                let data = TestBuffer(.float32, count: count) { value(rank: rank, index: $0, salt: 50) }
                expectError(countGroup.allReduceAsync(data.buffer, operation: .sum), "debug mode: a mismatched count is caught on every rank") { error in
                    guard case .mismatch(let message) = error else { return false }
                    return message.contains("group 'debug-count'") && message.contains("operation #0")
                        && message.contains("rank 0 issued all-reduce float32 count 10 sum")
                        && message.contains("rank 1 issued all-reduce float32 count 12 sum")
                }
                compare(data, "debug mode: a mismatched all-reduce leaves the data untouched") { value(rank: rank, index: $0, salt: 50) }
                expectError(countGroup.barrierAsync(), "debug mode: a group with a mismatch refuses more work") { error in
                    guard case .peerFailed(let message) = error else { return false }
                    return message.contains("unusable") && message.contains("mismatch")
                }

                // Rank 0 all-reduces, the others broadcast.
                guard let kindGroup = try world.split(color: 0, key: rank, name: "debug-kind") else { return fail("debug mode: kind mismatch", "split gave nil") }
                let buffer = TestBuffer(.float32, count: 10) { value(rank: rank, index: $0, salt: 51) }
                let work = rank == 0 ? kindGroup.allReduceAsync(buffer.buffer, operation: .sum) : kindGroup.broadcastAsync(buffer.buffer, root: 0)
                expectError(work, "debug mode: a mismatched kind is caught on every rank") { error in
                    guard case .mismatch(let message) = error else { return false }
                    return message.contains("group 'debug-kind'") && message.contains("rank 0 issued all-reduce float32 count 10 sum")
                        && message.contains("rank 1 issued broadcast float32 count 10 root 0")
                }
                compare(buffer, "debug mode: a mismatched broadcast leaves the data untouched") { value(rank: rank, index: $0, salt: 51) }

                // The world, whose collectives all matched, still works.
                check(attempt("world barrier after mismatches") { try world.barrier() }, "debug mode: other groups unaffected by a mismatch")
            } catch {
                fail("debug mode: mismatches", "threw \(error)")
            }
        }
    }

    // MARK: Timeouts

    /// Rank 0 waits on a receive nobody sends: a timeout error naming the group, the operation and its
    /// sequence number, not a hang; the receive is cancelled and the group still works.
    private func testReceiveTimeout(_ group: MPIProcessGroup) {
        guard size > 1 else { return }
        if rank == 0 {
            let previous = CommunicationTimeout.seconds
            CommunicationTimeout.set(1)
            let buffer = TestBuffer(.float32, count: 4)
            let work = group.receiveAsync(buffer.buffer, from: 1, tag: 4242)
            CommunicationTimeout.set(previous)
            expectError(work, "a receive nobody sends times out") {
                guard case .timedOut(let message) = $0 else { return false }
                return message.contains("group 'world'") && message.contains("receive #") && message.contains("tag 4242")
            }
        }
        check(attempt("barrier after a receive timeout") { try group.barrier() }, "group usable after a cancelled receive")
    }

    /// Rank 0 skips a collective: the others get a timeout error saying MPI cannot name the missing ranks; the
    /// group then refuses work. Rank 0 joins late, which completes the abandoned barrier on the others.
    /// (Without the debug mode, whatever CONVOY_DEBUG_COLLECTIVES says: it is what this case is about.)
    private func testCollectiveTimeout(_ world: MPIProcessGroup) {
        guard size > 1 else { return }
        let debugging = CollectiveDebugging.isEnabled
        CollectiveDebugging.set(false)
        defer { CollectiveDebugging.set(debugging) }
        do {
            guard let victim = try world.split(color: 0, key: rank, name: "victim") else { return fail("collective timeout", "split gave nil") }
            if rank != 0 {
                let previous = CommunicationTimeout.seconds
                CommunicationTimeout.set(1)
                let work = victim.barrierAsync()
                CommunicationTimeout.set(previous)
                expectError(work, "a collective a rank skips times out") {
                    guard case .timedOut(let message) = $0 else { return false }
                    return message.contains("barrier #0 on group 'victim'") && message.contains("CONVOY_DEBUG_COLLECTIVES")
                }
                expectError(victim.barrierAsync(), "a group whose collective timed out refuses more work") {
                    if case .peerFailed(let message) = $0 { return message.contains("unusable") }
                    return false
                }
            }
            try world.barrier()
            if rank == 0 {
                check(attempt("late barrier") { try victim.barrierAsync().wait(timeout: 30) }, "a late rank completes the abandoned barrier")
            }
            try world.barrier()
        } catch {
            fail("collective timeout", "threw \(error)")
        }
    }
}
