import ArgumentParser
import CMPI
import ConvoyComm
import ConvoyTensor
import Foundation

/// `convoy bench comm`: an nccl-tests-style table of one collective over a range of sizes.
struct BenchCommCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "comm",
        abstract: "Time a collective over a range of sizes: time, algorithm and bus bandwidth (nccl-tests definitions).",
        discussion: """
        Bus bandwidth = algorithm bandwidth × 2(n−1)/n for all-reduce, × (n−1)/n for reduce-scatter and \
        all-gather, × 1 for broadcast and send/receive. Local backend: also the memory-traffic rate of an \
        all-reduce (2·n·bytes per operation) against a plain parallel copy with one thread per rank, measured \
        in the same run. MPI backend (under mpirun): also the same all-reduce through MPI_Allreduce called \
        directly, by default with the algorithm Convoy's non-blocking path uses (Rabenseifner), so the ratio is \
        Convoy's own cost; the two are timed in alternating rounds and the best round of each is kept, so load on \
        a shared machine affects both alike. Only rank 0 prints.
        """)

    enum Operation: String, ExpressibleByArgument, CaseIterable {
        case allreduce, reducescatter, allgather, broadcast, sendrecv
    }

    @Option(help: "local or mpi (default: mpi under mpirun, else local).") var backend: String?
    @Option(help: "Ranks for the Local backend (MPI: the mpirun size).") var ranks: Int = 2
    @Option(help: "Operation: allreduce, reducescatter, allgather, broadcast, sendrecv.") var op: Operation = .allreduce
    @Option(name: .customLong("min-bytes"), help: "Smallest message in bytes.") var minBytes: Int = 1 << 20
    @Option(name: .customLong("max-bytes"), help: "Largest message in bytes (sizes double from min to max).") var maxBytes: Int = 64 << 20
    @Option(help: "Timed iterations per size.") var iterations: Int = 10
    @Option(help: "Rounds per size, alternating Convoy and direct MPI (MPI backend); the best round of each is reported.") var rounds: Int = 5
    @Option(name: .customLong("direct-algorithm"), help: "Algorithm of the direct MPI_Allreduce: rabenseifner (Convoy's, default) or default (Open MPI's own choice).")
    var directAlgorithm: DirectAlgorithm = .rabenseifner

    enum DirectAlgorithm: String, ExpressibleByArgument, CaseIterable {
        case rabenseifner, `default`
    }
    @Flag(help: "One JSON line per size.") var json = false

    func validate() throws {
        try InputBounds.check(ranks, InputBounds.localRanks, flag: "--ranks", why: "Local ranks are threads of this process")
        guard minBytes >= 4, maxBytes >= minBytes else { throw ValidationError("need 4 ≤ --min-bytes ≤ --max-bytes") }
        guard iterations > 0 else { throw ValidationError("--iterations must be positive") }
        guard (1...100).contains(rounds) else { throw ValidationError("--rounds must be in 1...100, got \(rounds)") }
    }

    /// One measured size.
    struct Row {
        var bytes: Int
        var seconds: Double
        var ranks: Int
        var directSeconds: Double?
        var copyRate: Double?
    }

    var sizes: [Int] {
        var result: [Int] = []
        var bytes = minBytes
        while bytes <= maxBytes { result.append(bytes / 4 * 4); bytes *= 2 }
        return result
    }

    func run() throws {
        let chosen = try CommunicationBackend.resolve(backend)
        switch chosen {
        case .local:
            if op == .sendrecv && ranks < 2 { throw ConvoyError.invalidArgument("sendrecv needs at least 2 ranks") }
            let rows = try sizes.map { bytes in
                var row = try measureLocal(bytes: bytes)
                row.copyRate = Self.parallelCopyRate(bytes: bytes, threads: ranks, iterations: iterations)
                return row
            }
            report(rows, backend: chosen)
        case .mpi:
            if op == .allreduce && directAlgorithm == .rabenseifner {
                // Open MPI reads MCA parameters at MPI_Init; the user's own choice (environment) wins.
                setenv("OMPI_MCA_coll_tuned_use_dynamic_rules", "1", 0)
                setenv("OMPI_MCA_coll_tuned_allreduce_algorithm", "6", 0)
            }
            let runtime = try MPIRuntime.initialize()
            let world = runtime.worldGroup()
            if op == .sendrecv && world.size < 2 { throw ConvoyError.invalidArgument("sendrecv needs at least 2 ranks") }
            let rows = try sizes.map { try measure(group: world, bytes: $0, direct: op == .allreduce) }
            if world.rank == 0 { report(rows, backend: chosen) }
        }
    }

    private func measureLocal(bytes: Int) throws -> Row {
        let op = self.op, iterations = self.iterations
        let rows = try LocalWorld.run(size: ranks, threadsPerRank: 1) { group in
            try BenchCommCommand.timeOperation(op, group: group, bytes: bytes, iterations: iterations)
        }
        return Row(bytes: bytes, seconds: rows.max()!, ranks: ranks)
    }

    private func measure(group: any ProcessGroup, bytes: Int, direct: Bool) throws -> Row {
        var seconds = Double.infinity, directSeconds = Double.infinity
        for _ in 0..<rounds {
            seconds = min(seconds, try Self.timeOperation(op, group: group, bytes: bytes, iterations: iterations))
            if direct { directSeconds = min(directSeconds, try Self.timeDirectMPIAllreduce(bytes: bytes, iterations: iterations)) }
        }
        return Row(bytes: bytes, seconds: seconds, ranks: group.size, directSeconds: direct ? directSeconds : nil)
    }

    /// Mean seconds per operation on this rank after a warm-up, bracketed by barriers.
    static func timeOperation(_ op: Operation, group: any ProcessGroup, bytes: Int, iterations: Int) throws -> Double {
        let count = bytes / 4
        let buffer = Tensor.full([count], value: Float(group.rank + 1))
        let chunk = ChunkLayout.range(total: count, parts: group.size, rank: group.rank)
        let part = Tensor.full([chunk.count], value: 1)
        func once() throws {
            switch op {
            case .allreduce: try group.allReduce(CommunicationBuffer(buffer), operation: .sum)
            case .reducescatter: try group.reduceScatter(input: CommunicationBuffer(buffer), output: CommunicationBuffer(part), operation: .sum)
            case .allgather: try group.allGather(input: CommunicationBuffer(part), output: CommunicationBuffer(buffer))
            case .broadcast: try group.broadcast(CommunicationBuffer(buffer), root: 0)
            case .sendrecv:
                // Ping-pong between ranks 0 and 1; one operation is one direction.
                if group.rank == 0 {
                    try group.send(CommunicationBuffer(buffer), to: 1, tag: 0)
                    try group.receive(CommunicationBuffer(buffer), from: 1, tag: 0)
                } else if group.rank == 1 {
                    try group.receive(CommunicationBuffer(buffer), from: 0, tag: 0)
                    try group.send(CommunicationBuffer(buffer), to: 0, tag: 0)
                }
            }
        }
        try once()
        try group.barrier()
        let start = DispatchTime.now().uptimeNanoseconds
        for _ in 0..<iterations { try once() }
        try group.barrier()
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9 / Double(iterations)
        return withExtendedLifetime((buffer, part)) { op == .sendrecv ? seconds / 2 : seconds }
    }

    /// The same all-reduce through MPI_Allreduce directly (in place, MPI_COMM_WORLD), for comparison.
    static func timeDirectMPIAllreduce(bytes: Int, iterations: Int) throws -> Double {
        let count = bytes / 4
        let buffer = Tensor.full([count], value: 1)
        func once() throws {
            let code = MPI_Allreduce(convoy_mpi_in_place(), buffer.floatPointer, Int32(count), convoy_mpi_float(), convoy_mpi_sum(), convoy_mpi_comm_world())
            guard code == convoy_mpi_success() else { throw MPIRuntime.backendError(code: code, operation: "MPI_Allreduce") }
        }
        try once()
        MPI_Barrier(convoy_mpi_comm_world())
        let start = DispatchTime.now().uptimeNanoseconds
        for _ in 0..<iterations { try once() }
        MPI_Barrier(convoy_mpi_comm_world())
        return withExtendedLifetime(buffer) { Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9 / Double(iterations) }
    }

    /// Bytes read + written per second when `threads` threads each copy `bytes` bytes at once.
    static func parallelCopyRate(bytes: Int, threads: Int, iterations: Int) -> Double {
        let sources = (0..<threads).map { _ in Tensor.full([bytes / 4], value: 1) }
        let destinations = (0..<threads).map { _ in Tensor.zeros([bytes / 4]) }
        let pool = ComputePool(threadCount: threads)
        func copyAll() {
            pool.runParts { part in
                destinations[part].storage.pointer.copyMemory(from: sources[part].storage.pointer, byteCount: bytes / 4 * 4)
            }
        }
        copyAll()
        var best = Double.infinity
        for _ in 0..<iterations {
            let start = DispatchTime.now().uptimeNanoseconds
            copyAll()
            best = min(best, Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
        }
        return 2 * Double(threads) * Double(bytes) / best
    }

    private func busFactor(_ n: Int) -> Double {
        switch op {
        case .allreduce: return 2 * Double(n - 1) / Double(n)
        case .reducescatter, .allgather: return Double(n - 1) / Double(n)
        case .broadcast, .sendrecv: return 1
        }
    }

    private func report(_ rows: [Row], backend: CommunicationBackend) {
        if !json {
            func column(_ title: String, _ width: Int) -> String { String(repeating: " ", count: max(0, width - title.count)) + title }
            var header = [column("bytes", 12), column("time (us)", 12), column("algbw GB/s", 12), column("busbw GB/s", 12)].joined(separator: " ")
            if backend == .local { header += " " + [column("traffic GB/s", 14), column("memcpy GB/s", 14), column("ratio", 10)].joined(separator: " ") }
            if backend == .mpi && op == .allreduce { header += " " + [column("MPI direct (us)", 16), column("ratio", 10)].joined(separator: " ") }
            let direct = backend == .mpi && op == .allreduce ? ", direct MPI_Allreduce: \(ProcessInfo.processInfo.environment["OMPI_MCA_coll_tuned_allreduce_algorithm"].map { "tuned algorithm \($0)" } ?? "Open MPI's default algorithm"), best of \(rounds) alternating rounds" : ""
            print("# \(op.rawValue), \(backend.rawValue) backend, \(rows.first?.ranks ?? 0) ranks, \(iterations) iterations\(direct)")
            print(header)
        }
        for row in rows {
            let algbw = Double(row.bytes) / row.seconds / 1e9
            let busbw = algbw * busFactor(row.ranks)
            // Memory traffic of a shared-memory all-reduce: every buffer read once and written once.
            let traffic = op == .allreduce ? 2 * Double(row.ranks) * Double(row.bytes) / row.seconds / 1e9 : nil
            if json {
                var object: [String: Any] = ["op": op.rawValue, "backend": backend.rawValue, "ranks": row.ranks, "bytes": row.bytes,
                                             "time_us": row.seconds * 1e6, "algbw_gbps": algbw, "busbw_gbps": busbw]
                if let rate = row.copyRate { object["memcpy_gbps"] = rate / 1e9 }
                if let traffic { object["traffic_gbps"] = traffic }
                if let direct = row.directSeconds {
                    object["mpi_direct_us"] = direct * 1e6
                    object["overhead_ratio"] = row.seconds / direct
                    object["mpi_direct_algorithm"] = ProcessInfo.processInfo.environment["OMPI_MCA_coll_tuned_allreduce_algorithm"] ?? "default"
                }
                let data = try! JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
                print(String(decoding: data, as: UTF8.self))
            } else {
                var line = String(format: "%12d %12.1f %12.2f %12.2f", row.bytes, row.seconds * 1e6, algbw, busbw)
                if let rate = row.copyRate {
                    if let traffic { line += String(format: " %14.2f %14.2f %10.2f", traffic, rate / 1e9, traffic / (rate / 1e9)) } else { line += String(format: " %14s %14.2f %10s", "-", rate / 1e9, "-") }
                }
                if let direct = row.directSeconds { line += String(format: " %16.1f %10.3f", direct * 1e6, row.seconds / direct) }
                print(line)
            }
        }
    }
}
