import ConvoyNN
import ConvoyParallel
import ConvoyTensor
import Foundation
import Testing

/// Row-strided pieces: a table sharded by id modulo S stored as one piece per server (rows s, s + S, …), read
/// back whole, as boxes, and as the shards of another S; coverage and overlap checked by the verifier.
@Suite struct RowStridedPieceTests {
    func scratch() -> String { FileManager.default.temporaryDirectory.appendingPathComponent("convoy-strided-\(UUID().uuidString)").path }

    /// Row r of the [rows, width] test table holds 100·r + column.
    static func table(rows: Int, width: Int) -> [Float] {
        var values: [Float] = []
        for r in 0..<rows { for column in 0..<width { values.append(Float(100 * r + column)) } }
        return values
    }

    /// Writes the table as `servers` strided pieces (each server its own rank file) and publishes the index.
    func save(rows: Int, width: Int, servers: Int, skipping skipped: Int? = nil, extra: (first: Int, stride: Int)? = nil, to directory: String) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let all = Self.table(rows: rows, width: width)
        var pieces = (0..<servers).filter { $0 != skipped }.map { (first: $0, stride: servers) }
        if let extra { pieces.append(extra) }
        for (rank, piece) in pieces.enumerated() {
            let progression = RowProgression(first: piece.first, stride: piece.stride, count: (rows - piece.first + piece.stride - 1) / piece.stride)
            var values: [Float] = []
            for i in 0..<progression.count { values += all[(progression.row(i) * width)..<((progression.row(i) + 1) * width)] }
            let source = CheckpointShardWriter.Source(tensor: "t", role: .parameter, parameter: "t", state: nil, globalShape: [rows, width],
                                                      box: TensorBox(offsets: [piece.first, 0], shape: [progression.count, width]),
                                                      data: Tensor(shape: [progression.count, width], values: values), rowStride: piece.stride)
            try CheckpointShardWriter.write([source], optimizerScalars: [:], rank: rank, of: pieces.count, into: directory)
        }
        let index = try CheckpointIndexAssembler.assemble(in: directory, ranks: pieces.count, step: 1, samples: 1, layout: "test")
        try AtomicFile.write(try index.encoded(), to: directory + "/" + CheckpointIndex.fileName)
    }

    /// 11 rows over 3 servers: verify passes; the whole table, a box across the pieces, and the shards of 1, 2
    /// and 4 servers read back exactly; a reader's shard lists only rows it holds.
    @Test func stridedPiecesReadBackUnderAnyLayout() throws {
        let directory = scratch()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let rows = 11, width = 3, all = Self.table(rows: rows, width: width)
        try save(rows: rows, width: width, servers: 3, to: directory)
        let report = try CheckpointVerifier.verify(directory: directory)
        #expect(report.pieces == 3 && report.files == 3)
        let reader = try ShardedCheckpointReader(directory: directory)
        #expect(reader.index.tensors["t"]!.pieces.map(\.rowStride) == [3, 3, 3])
        #expect(try reader.readWhole("t").toArray() == all)
        let box = TensorBox(offsets: [2, 1], shape: [5, 2])
        let part = Tensor.zeros([5, 2])
        try reader.read("t", shape: [rows, width], boxes: [box], into: part)
        var expected: [Float] = []
        for r in 2..<7 { expected += [Float(100 * r + 1), Float(100 * r + 2)] }
        #expect(part.toArray() == expected)
        for servers in [1, 2, 4] {
            for server in 0..<servers {
                let shard = RowProgression(residue: server, stride: servers, rows: rows)
                let values = Tensor.zeros([shard.count, width])
                try reader.read("t", shape: [rows, width], rows: shard, into: values)
                var rowsOfShard: [Float] = []
                for i in 0..<shard.count { rowsOfShard += all[(shard.row(i) * width)..<((shard.row(i) + 1) * width)] }
                #expect(values.toArray() == rowsOfShard)
            }
        }
    }

    /// A missing server's piece, or a piece that repeats rows another holds, is refused by the assembler with
    /// the tensor named; a corrupted byte fails verification.
    @Test func gapsOverlapsAndCorruptionAreRefused() throws {
        let directory = scratch()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let missing = #expect(throws: ConvoyError.self) { try save(rows: 10, width: 2, servers: 2, skipping: 1, to: directory + "/gap") }
        #expect("\(missing!)".contains("'t'") && "\(missing!)".contains("10 of its 20"))
        let overlap = #expect(throws: ConvoyError.self) { try save(rows: 10, width: 2, servers: 2, extra: (first: 4, stride: 4), to: directory + "/overlap") }
        #expect("\(overlap!)".contains("twice"))
        try save(rows: 10, width: 2, servers: 2, to: directory + "/good")
        let file = directory + "/good/" + CheckpointIndex.rankFileName(rank: 1, of: 2)
        var bytes = try Data(contentsOf: URL(fileURLWithPath: file))
        bytes[bytes.count - 1] ^= 0x5a
        try bytes.write(to: URL(fileURLWithPath: file))
        let corrupted = #expect(throws: ConvoyError.self) { _ = try CheckpointVerifier.verify(directory: directory + "/good") }
        #expect("\(corrupted!)".contains("corrupted"))
    }

    /// The progression arithmetic the reader and verifier rely on, against brute force.
    @Test func rowProgressionsMatchBruteForce() {
        for first in 0..<4 {
            for stride in 1..<5 {
                for count in 0..<6 {
                    let p = RowProgression(first: first, stride: stride, count: count)
                    let rows = Set((0..<count).map { first + $0 * stride })
                    for low in 0..<12 {
                        for high in low..<14 {
                            #expect(Set(p.positions(in: low..<high).map(p.row)) == rows.filter { (low..<high).contains($0) })
                        }
                    }
                    for otherFirst in 0..<4 {
                        for otherStride in 1..<4 {
                            let q = RowProgression(first: otherFirst, stride: otherStride, count: 4)
                            let theirs = Set((0..<4).map { otherFirst + $0 * otherStride })
                            #expect(p.intersects(q) == !rows.isDisjoint(with: theirs))
                        }
                    }
                }
            }
        }
    }
}
