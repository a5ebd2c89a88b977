import ConvoyNN
import ConvoyTensor
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Reads regions of the tensors of a sharded checkpoint: for each box a rank needs, it intersects the box
/// with the stored pieces and reads only the bytes of those intersections (a whole piece when the box covers
/// it, verifying its checksum then). Errors name the file and the tensor.
public final class ShardedCheckpointReader {
    public let directory: String
    public let index: CheckpointIndex
    private var descriptors: [String: Int32] = [:]
    private let indexPath: String

    /// Opens the checkpoint in `directory` (its index must exist: the save finished).
    public init(directory: String) throws {
        self.directory = directory
        indexPath = directory + "/" + CheckpointIndex.fileName
        index = try CheckpointIndex.read(from: directory)
    }

    /// Reads pieces of a checkpoint whose index is `index` (not yet written: a save exporting from its pieces).
    public init(directory: String, index: CheckpointIndex) {
        self.directory = directory
        indexPath = directory + "/" + CheckpointIndex.fileName
        self.index = index
    }

    deinit { for descriptor in descriptors.values { close(descriptor) } }

    /// The index entry of `tensor`, checked to have `shape`.
    public func entry(_ tensor: String, shape: [Int]? = nil) throws -> CheckpointIndex.Entry {
        guard let entry = index.tensors[tensor] else {
            throw ConvoyError.incompatible("\(indexPath) has no tensor '\(tensor)'; the checkpoint was saved from another model (or the index does not cover it)")
        }
        if let shape, entry.shape != shape {
            throw ConvoyError.incompatible("tensor '\(tensor)' in \(indexPath) has shape \(entry.shape), this run's model has \(shape); resume with the model the checkpoint was saved from")
        }
        return entry
    }

    /// Throws unless the stored pieces of `tensor` hold every element of `boxes` exactly once (reads nothing).
    public func checkCovers(_ tensor: String, shape: [Int], boxes: [TensorBox]) throws {
        let entry = try entry(tensor, shape: shape)
        for box in boxes {
            let covered = entry.pieces.reduce(0) { $0 + $1.overlapCount(with: box) }
            guard covered == box.count else {
                throw ConvoyError.malformedFile(path: indexPath, reason: "does not cover tensor '\(tensor)': of its region \(box) (\(box.count) elements) the pieces hold \(covered)\(covered > box.count ? " — some more than once" : "")")
            }
        }
    }

    /// Reads the elements of `boxes` of `tensor` into `destination` (contiguous, the boxes one after the other,
    /// each row-major, in the stored dtype).
    public func read(_ tensor: String, shape: [Int], boxes: [TensorBox], into destination: Tensor) throws {
        try checkCovers(tensor, shape: shape, boxes: boxes)
        let entry = try entry(tensor)
        let elementSize = entry.dtype.byteSize
        guard destination.isContiguous, destination.dtype == entry.dtype, destination.count == boxes.reduce(0, { $0 + $1.count }) else {
            throw ConvoyError.incompatible("tensor '\(tensor)' is stored as \(entry.dtype); it cannot be read into a \(destination.dtype) tensor of \(destination.count) elements")
        }
        let base = destination.storage.pointer + destination.offset * elementSize
        var start = 0
        for box in boxes {
            for piece in entry.pieces {
                if piece.rowStride != nil {
                    try readRows(of: piece, tensor: tensor, within: box, elementSize: elementSize) { region, rowBox, bytes, firstElement in
                        bytes.withUnsafeBytes { raw in
                            rowBox.forEachRun(of: region, into: box) { source, target, length in
                                (base + (start + target) * elementSize).copyMemory(from: raw.baseAddress! + (source + firstElement) * elementSize, byteCount: length * elementSize)
                            }
                        }
                    }
                    continue
                }
                guard let region = piece.box.intersection(box) else { continue }
                // The piece's elements from the region's first to its last, read at once (all of it when the
                // region is the piece, checksum verified).
                var first = -1, last = 0
                piece.box.forEachRun(of: region, into: box) { source, _, length in
                    if first < 0 { first = source }
                    last = source + length
                }
                let whole = region == piece.box
                let bytes = try readBytes(of: piece, tensor: tensor, elements: first..<last, elementSize: elementSize, verifying: whole)
                bytes.withUnsafeBytes { raw in
                    piece.box.forEachRun(of: region, into: box) { source, target, length in
                        (base + (start + target) * elementSize).copyMemory(from: raw.baseAddress! + (source - first) * elementSize, byteCount: length * elementSize)
                    }
                }
            }
            start += box.count
        }
        withExtendedLifetime(destination) {}
    }

    /// For a row-strided piece: reads the span of its rows that fall in `box`'s rows at once (the whole piece,
    /// checksum verified, when all do), then calls `body(region, rowBox, bytes, offset)` for each such row
    /// whose box meets `box`: `region` is that intersection, and the row's elements start at element `offset`
    /// of `bytes`.
    private func readRows(of piece: CheckpointIndex.Piece, tensor: String, within box: TensorBox, elementSize: Int,
                          _ body: (TensorBox, TensorBox, [UInt8], Int) -> Void) throws {
        let positions = box.offsets.isEmpty ? 0..<piece.rows.count : piece.rows.positions(in: box.offsets[0]..<(box.offsets[0] + box.shape[0]))
        guard !positions.isEmpty else { return }
        let rowElements = piece.rowElements
        let bytes = try readBytes(of: piece, tensor: tensor, elements: (positions.lowerBound * rowElements)..<(positions.upperBound * rowElements),
                                  elementSize: elementSize, verifying: positions.count == piece.rows.count)
        for i in positions {
            let rowBox = piece.rowBox(i)
            guard let region = rowBox.intersection(box) else { continue }
            body(region, rowBox, bytes, (i - positions.lowerBound) * rowElements)
        }
    }

    /// Reads rows `rows` (a parameter server's shard: first, first + stride, …) of the 2-or-more-dimensional
    /// `tensor` into `destination` (those rows one after the other, whole), from pieces of any layout: plain
    /// boxes or row-strided pieces written by any number of servers. Pieces holding none of the rows are not
    /// read; the others are read whole, checksums verified.
    public func read(_ tensor: String, shape: [Int], rows: RowProgression, into destination: Tensor) throws {
        let entry = try entry(tensor, shape: shape)
        let elementSize = entry.dtype.byteSize, rowElements = shape.dropFirst().reduce(1, *)
        guard shape.count >= 1, destination.isContiguous, destination.dtype == entry.dtype, destination.count == rows.count * rowElements,
              rows.count == 0 || rows.end <= shape[0] else {
            throw ConvoyError.incompatible("rows \(rows.first), \(rows.first + rows.stride), … (\(rows.count)) of tensor '\(tensor)' (\(entry.dtype) \(shape)) cannot be read into a \(destination.dtype) tensor of \(destination.count) elements")
        }
        let base = destination.storage.pointer + destination.offset * elementSize
        let rowShape = Array(shape.dropFirst())
        var covered = 0
        for piece in entry.pieces {
            let held = piece.rows
            // Does any of the piece's rows belong to `rows`? (The residues repeat after `rows.stride` rows.)
            guard (0..<min(held.count, rows.stride)).contains(where: { rows.position(of: held.row($0)) != nil }) else { continue }
            let bytes = try readBytes(of: piece, tensor: tensor, elements: 0..<piece.box.count, elementSize: elementSize, verifying: true)
            let pieceRowElements = piece.rowElements
            bytes.withUnsafeBytes { raw in
                for i in 0..<held.count {
                    guard let j = rows.position(of: held.row(i)) else { continue }
                    // The piece's part of the row (a box of the row's own shape), copied into row j.
                    let part = TensorBox(offsets: Array(piece.box.offsets.dropFirst()), shape: Array(piece.box.shape.dropFirst()))
                    part.forEachRun(of: part, into: TensorBox(whole: rowShape)) { source, target, length in
                        (base + (j * rowElements + target) * elementSize).copyMemory(from: raw.baseAddress! + (i * pieceRowElements + source) * elementSize,
                                                                                   byteCount: length * elementSize)
                    }
                    covered += pieceRowElements
                }
            }
        }
        withExtendedLifetime(destination) {}
        guard covered == destination.count else {
            throw ConvoyError.malformedFile(path: indexPath, reason: "does not cover tensor '\(tensor)': of rows \(rows.first), \(rows.first + rows.stride), … (\(destination.count) elements) the pieces hold \(covered)\(covered > destination.count ? " — some more than once" : "")")
        }
        try FiniteValues.check(destination, name: tensor, in: directory)
    }

    /// Reads the parameter values of the slices `resident` into their values, and returns the optimizer state
    /// of the slices `optimized` keyed as their optimizer expects (`<optimizerKey>.<state>`, laid out like
    /// the slice's values). Shapes and coverage of the parameters are checked before anything is written.
    public func load(parametersInto resident: [CheckpointSlice], optimizerStateOf optimized: [CheckpointSlice]) throws -> OptimizerState {
        for slice in resident {
            try checkCovers(CheckpointIndex.name(of: slice.parameter, role: .parameter), shape: slice.globalShape, boxes: slice.boxes)
        }
        var tensors: [String: Tensor] = [:]
        for slice in optimized {
            if let master = slice.master {
                // Master weights where the checkpoint has them, else the parameter's values in fp32.
                let masterName = CheckpointIndex.name(of: slice.parameter, role: .master)
                try readConverting(index.tensors[masterName] != nil ? masterName : CheckpointIndex.name(of: slice.parameter, role: .parameter), slice, into: master)
            }
            for state in index.optimizerStates(of: slice.parameter) {
                let name = CheckpointIndex.name(of: slice.parameter, role: .optimizer, state: state)
                let tensor = Tensor(uninitializedShape: slice.values.shape, dtype: try entry(name).dtype)
                try read(name, shape: slice.globalShape, boxes: slice.boxes, into: tensor)
                try FiniteValues.check(tensor, name: name, in: directory)
                tensors[slice.optimizerKey + "." + state] = tensor
            }
        }
        for slice in resident { try readConverting(CheckpointIndex.name(of: slice.parameter, role: .parameter), slice, into: slice.values) }
        return OptimizerState(tensors: tensors, scalars: index.optimizerScalars)
    }

    /// Reads `slice`'s boxes of `name` into `destination` (laid out like the slice's values), converting from
    /// the stored dtype when it differs, and checks that every value is finite.
    private func readConverting(_ name: String, _ slice: CheckpointSlice, into destination: Tensor) throws {
        let stored = try entry(name).dtype
        if destination.isContiguous && destination.dtype == stored {
            try read(name, shape: slice.globalShape, boxes: slice.boxes, into: destination)
            try FiniteValues.check(destination, name: name, in: directory)
            return
        }
        let staged = Tensor(uninitializedShape: destination.shape, dtype: stored)
        try read(name, shape: slice.globalShape, boxes: slice.boxes, into: staged)
        try FiniteValues.check(staged, name: name, in: directory)
        let converted = staged.converted(to: destination.dtype)
        if destination.isContiguous {
            let bytes = destination.count * destination.dtype.byteSize
            (destination.storage.pointer + destination.offset * destination.dtype.byteSize)
                .copyMemory(from: converted.storage.pointer + converted.offset * converted.dtype.byteSize, byteCount: bytes)
            withExtendedLifetime(converted) {}
        } else {
            withNoGrad { destination.assign(staged) }
        }
    }

    /// The whole of `tensor`, as a new tensor of its shape.
    public func readWhole(_ tensor: String) throws -> Tensor {
        let entry = try entry(tensor)
        let result = Tensor(uninitializedShape: entry.shape, dtype: entry.dtype)
        try read(tensor, shape: entry.shape, boxes: [TensorBox(whole: entry.shape)], into: result)
        return result
    }

    /// Reads elements `elements` of `piece` (counted in the piece's row-major order).
    func readBytes(of piece: CheckpointIndex.Piece, tensor: String, elements: Range<Int>, elementSize: Int, verifying: Bool) throws -> [UInt8] {
        let path = directory + "/" + piece.file
        let descriptor = try descriptor(for: piece.file, tensor: tensor)
        var bytes = [UInt8](repeating: 0, count: elements.count * elementSize)
        let offset = piece.byteStart + elements.lowerBound * elementSize
        let got = bytes.withUnsafeMutableBytes { raw -> Int in
            var done = 0
            while done < raw.count {
                let result = pread(descriptor, raw.baseAddress! + done, raw.count - done, off_t(offset + done))
                if result < 0 && errno == EINTR { continue }
                if result <= 0 { return result < 0 ? -1 : done }
                done += result
            }
            return done
        }
        guard got == bytes.count else {
            throw ConvoyError.malformedFile(path: path, reason: got < 0 ? "cannot read tensor '\(tensor)' (\(String(cString: strerror(errno))))"
                                                                        : "is shorter than the index says: tensor '\(tensor)' piece \(piece.box) ends at byte \(piece.byteEnd)")
        }
        if verifying {
            let checksum = bytes.withUnsafeBytes { PieceChecksum.hex($0) }
            guard checksum == piece.checksum else {
                throw ConvoyError.malformedFile(path: path, reason: "tensor '\(tensor)' piece \(piece.box) (bytes \(piece.byteStart)..<\(piece.byteEnd)) is corrupted: checksum \(checksum), the index says \(piece.checksum)")
            }
        }
        return bytes
    }

    private func descriptor(for file: String, tensor: String) throws -> Int32 {
        if let descriptor = descriptors[file] { return descriptor }
        let path = directory + "/" + file
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else {
            throw ConvoyError.malformedFile(path: path, reason: "cannot open it (\(String(cString: strerror(errno)))); it holds tensor '\(tensor)' of the checkpoint")
        }
        descriptors[file] = descriptor
        return descriptor
    }
}
