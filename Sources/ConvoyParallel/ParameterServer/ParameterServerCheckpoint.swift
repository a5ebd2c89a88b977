import ConvoyComm
import ConvoyNN
import ConvoyTensor
import Foundation

/// The servers' part of a checkpoint: one safetensors file per server with its rows of every table (values and
/// per-row optimizer state) and its chunk of the dense parameters, plus the layout in the file's metadata
/// (rows dealt by id mod S; dense chunks by ``ChunkLayout``). Any number of servers can load any such
/// checkpoint: each new server takes its rows (id mod S' == s') from every old shard, so resuming with a
/// different `--ps-servers` continues from the same values.
public enum ParameterServerCheckpoint {
    public static func shardFileName(server: Int, of servers: Int) -> String { "ps-server-\(server)-of-\(servers).safetensors" }

    /// Writes server `server`'s (of `servers`) tables and dense chunk into `directory` (atomically: temporary
    /// file, fsync, rename). One process's whole tables are server 0 of 1.
    public static func writeShard(tables: [SparseTable], dense: SparseTable?, server: Int, of servers: Int, into directory: String,
                                  step: Int, metadata: [String: String] = [:]) throws {
        var tensors: [String: Tensor] = [:]
        for table in tables {
            tensors["table.\(table.table).values"] = table.values
            if let state = table.state { tensors["table.\(table.table).state"] = state }
        }
        if let dense {
            tensors["dense.values"] = dense.values
            if let state = dense.state { tensors["dense.state"] = state }
        }
        var info = metadata
        info["layout"] = "rows: id mod servers; dense: ChunkLayout"
        info["servers"] = String(servers)
        info["server"] = String(server)
        info["step"] = String(step)
        info["optimizer"] = tables.first?.optimizer.kind.rawValue ?? dense?.optimizer.kind.rawValue ?? ""
        info["table_rows"] = tables.map { String($0.rows) }.joined(separator: ",")
        try SafeTensors(tensors: tensors, metadata: info).write(to: directory + "/" + shardFileName(server: server, of: servers))
    }

    /// How many servers wrote the checkpoint in `directory` (from its shard files).
    public static func savedServerCount(in directory: String) throws -> Int {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        let counts = Set(names.compactMap { name -> Int? in
            guard name.hasPrefix("ps-server-"), name.hasSuffix(".safetensors"), let of = name.range(of: "-of-") else { return nil }
            return Int(name[of.upperBound...].dropLast(".safetensors".count))
        })
        guard counts.count == 1, let count = counts.first else {
            throw ConvoyError.incompatible("checkpoint \(directory) holds no parameter-server shards (ps-server-*-of-*.safetensors) or shards of several layouts (\(counts.sorted())); resume from a checkpoint of a --ps-servers run")
        }
        for server in 0..<count where !FileManager.default.fileExists(atPath: directory + "/" + shardFileName(server: server, of: count)) {
            throw ConvoyError.incompatible("checkpoint \(directory) lacks \(shardFileName(server: server, of: count)); it is incomplete")
        }
        return count
    }

    /// Fills `tables` (this server's shards, empty of history) and `dense` (its chunk of `denseCount` elements)
    /// from a checkpoint written by any number of servers.
    public static func load(from directory: String, into tables: [SparseTable], dense: SparseTable?, denseRange: Range<Int>, denseCount: Int) throws {
        let saved = try savedServerCount(in: directory)
        for old in 0..<saved {
            let path = directory + "/" + shardFileName(server: old, of: saved)
            let file = try SafeTensors.read(contentsOf: path)
            for table in tables {
                let values = try tensor(file, "table.\(table.table).values", path: path, width: table.width)
                let state = table.state == nil ? nil : try tensor(file, "table.\(table.table).state", path: path, width: table.stateWidth)
                guard Int(file.metadata["table_rows"]?.split(separator: ",").dropFirst(table.table).first ?? "") == table.rows else {
                    throw ConvoyError.incompatible("\(path) holds table \(table.table) with \(file.metadata["table_rows"] ?? "?") rows; the model has \(table.rows) (same vocabulary sizes needed)")
                }
                let source = values.floatPointer, stateSource = state?.floatPointer
                for localRow in 0..<values.shape[0] {
                    let id = localRow * saved + old
                    guard id % table.shardCount == table.shardIndex else { continue }
                    let row = id / table.shardCount
                    (table.values.floatPointer + row * table.width).update(from: source + localRow * table.width, count: table.width)
                    if let stateSource, let target = table.state {
                        (target.floatPointer + row * table.stateWidth).update(from: stateSource + localRow * table.stateWidth, count: table.stateWidth)
                    }
                }
            }
            if let dense {
                let oldRange = ChunkLayout.range(total: denseCount, parts: saved, rank: old)
                let overlap = max(oldRange.lowerBound, denseRange.lowerBound)..<min(oldRange.upperBound, denseRange.upperBound)
                guard !overlap.isEmpty else { continue }
                let values = try tensor(file, "dense.values", path: path, width: 1)
                let state = dense.state == nil ? nil : try tensor(file, "dense.state", path: path, width: dense.stateWidth)
                guard values.shape[0] == oldRange.count else {
                    throw ConvoyError.incompatible("\(path) holds \(values.shape[0]) dense values; its chunk of \(denseCount) should have \(oldRange.count) (a different model)")
                }
                for element in overlap {
                    dense.values.floatPointer[element - denseRange.lowerBound] = values.floatPointer[element - oldRange.lowerBound]
                    if let state, let target = dense.state {
                        (target.floatPointer + (element - denseRange.lowerBound) * dense.stateWidth)
                            .update(from: state.floatPointer + (element - oldRange.lowerBound) * dense.stateWidth, count: dense.stateWidth)
                    }
                }
            }
        }
    }

    private static func tensor(_ file: SafeTensors, _ name: String, path: String, width: Int) throws -> Tensor {
        guard let tensor = file.tensors[name] else {
            throw ConvoyError.incompatible("\(path) has no tensor '\(name)'; it was saved for another model or optimizer")
        }
        guard tensor.rank == 2, tensor.shape[1] == width else {
            throw ConvoyError.incompatible("\(path): '\(name)' has shape \(tensor.shape), expected [rows, \(width)] (another model or optimizer)")
        }
        return tensor.converted(to: .float32).contiguous()
    }
}
