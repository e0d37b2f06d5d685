// Loads the compiled Core ML model, builds the three image inputs, predicts on the Neural Engine,
// upscales every map to the contract's final size with Lanczos (vImage) and writes the PNGs map by map.
// An actor: loading and prediction never block the caller, and one model is never run twice at once.
import Accelerate
import CoreGraphics
import CoreML
import Foundation
import ImageIO
import UniformTypeIdentifiers
import Vision

/// One photo as the model must see it: upright (EXIF orientation) and in sRGB.
struct PBRView {
    let image: CGImage
    let orientation: CGImagePropertyOrientation

    /// Reads a photo file; Display P3 (and any other colour space) is converted to sRGB, the space the
    /// model was trained in, and the EXIF orientation is kept for Core ML to apply.
    init(contentsOf url: URL) throws {
        guard let source = CGImageSourceCreateWithURL(url as CFURL, nil),
              let decoded = CGImageSourceCreateImageAtIndex(source, 0, nil)
        else { throw PBRError.badInput("\(url.lastPathComponent) is not an image") }
        let properties = CGImageSourceCopyPropertiesAtIndex(source, 0, nil) as? [CFString: Any]
        let raw = (properties?[kCGImagePropertyOrientation] as? UInt32) ?? 1
        orientation = CGImagePropertyOrientation(rawValue: raw) ?? .up
        image = try Self.sRGB(decoded)
    }

    init(image: CGImage, orientation: CGImagePropertyOrientation = .up) throws {
        self.image = try Self.sRGB(image)
        self.orientation = orientation
    }

    /// Drawing into an sRGB context colour-matches; `copy(colorSpace:)` would only relabel the pixels.
    private static func sRGB(_ image: CGImage) throws -> CGImage {
        let srgb = CGColorSpace(name: CGColorSpace.sRGB)!
        if image.colorSpace?.name == CGColorSpace.sRGB { return image }
        guard let context = CGContext(data: nil, width: image.width, height: image.height, bitsPerComponent: 8,
                                      bytesPerRow: 0, space: srgb,
                                      bitmapInfo: CGImageAlphaInfo.noneSkipLast.rawValue)
        else { throw PBRError.badInput("cannot convert a \(image.width)x\(image.height) photo to sRGB") }
        context.draw(image, in: CGRect(x: 0, y: 0, width: image.width, height: image.height))
        guard let converted = context.makeImage() else { throw PBRError.badInput("cannot convert a photo to sRGB") }
        return converted
    }
}

actor PBRPredictor {
    nonisolated let contract: PBRContract
    private let model: MLModel

    /// - Parameter modelURL: the compiled model (`student.mlmodelc`; Xcode compiles the .mlpackage you add).
    ///   The contract is read from the model's own metadata, which the converter embeds.
    init(modelURL: URL) async throws {
        let config = MLModelConfiguration()
        config.computeUnits = .cpuAndNeuralEngine  // what the exporter's ANE report targets
        model = try await MLModel.load(contentsOf: modelURL, configuration: config)
        contract = try PBRContract.load(from: model)
    }

    /// The model's raw maps at `contract.outputSize`: per output name, its channels as planar float planes.
    func predictRaw(views: [PBRView]) async throws -> [String: [[Float]]] {
        let output = try await model.prediction(from: features(views))
        var maps: [String: [[Float]]] = [:]
        for name in contract.outputNames {
            maps[name] = try planes(output, name)
        }
        return maps
    }

    /// Predicts and writes albedo/roughness/metallic/normal.png at `contract.finalSize` into `folder`, one map
    /// at a time, so that only one upscaled map is ever in memory (about 50 MiB at 2048 px, not 400).
    func predict(views: [PBRView], writingTo folder: URL) async throws {
        let output = try await model.prediction(from: features(views))
        for name in contract.outputNames {
            var map = try planes(output, name).map { Self.lanczos($0, from: contract.outputSize, to: contract.finalSize) }
            if name == "normal" {
                Self.renormalize(&map)
                map = map.map { $0.map { ($0 + 1) / 2 } }  // PNG stores (n + 1) / 2
            }
            // colour (albedo) is sRGB; data maps (roughness, metallic, normal) carry no colour profile
            try Self.writePNG(map, side: contract.finalSize, colour: name == "albedo",
                              to: folder.appendingPathComponent("\(name).png"))
        }
    }

    // MARK: - helpers

    private func features(_ views: [PBRView]) throws -> MLDictionaryFeatureProvider {
        guard views.count == contract.inputNames.count else {
            throw PBRError.badInput("need \(contract.inputNames.count) views, got \(views.count)")
        }
        var features: [String: MLFeatureValue] = [:]
        for (name, view) in zip(contract.inputNames, views) {
            guard let constraint = model.modelDescription.inputDescriptionsByName[name]?.imageConstraint else {
                throw PBRError.badContract("the model has no image input named \(name)")
            }
            features[name] = try MLFeatureValue(cgImage: view.image, orientation: view.orientation,
                                                constraint: constraint,
                                                options: [.cropAndScale: VNImageCropAndScaleOption.scaleFill.rawValue])
        }
        return try MLDictionaryFeatureProvider(dictionary: features)
    }

    /// One output's channels, read through its raw bytes with its own strides (FP16 converted by vImage):
    /// never element by element through NSNumber, and never without checking shape and type.
    private func planes(_ output: MLFeatureProvider, _ name: String) throws -> [[Float]] {
        guard let array = output.featureValue(for: name)?.multiArrayValue else {
            throw PBRError.badOutput("missing output \(name)")
        }
        let side = contract.outputSize, channels = contract.outputChannels[name] ?? 1
        let shape = array.shape.map(\.intValue), strides = array.strides.map(\.intValue)
        guard shape == [1, channels, side, side], strides[3] == 1 else {
            throw PBRError.badOutput("\(name) has shape \(shape) and strides \(strides), the contract says [1, \(channels), \(side), \(side)]")
        }
        let width: Int
        switch array.dataType {
        case .float32: width = 4
        case .float16: width = 2
        default: throw PBRError.badOutput("\(name) is neither float32 nor float16")
        }
        return try array.withUnsafeBytes { raw in
            try (0..<channels).map { c in
                var plane = [Float](repeating: 0, count: side * side)
                let base = raw.baseAddress! + c * strides[1] * width
                if width == 4 {
                    for y in 0..<side {
                        let row = base + y * strides[2] * 4
                        plane.withUnsafeMutableBytes { dst in
                            (dst.baseAddress! + y * side * 4).copyMemory(from: row, byteCount: side * 4)
                        }
                    }
                } else {
                    try plane.withUnsafeMutableBytes { dst in
                        var src = vImage_Buffer(data: UnsafeMutableRawPointer(mutating: base), height: vImagePixelCount(side),
                                                width: vImagePixelCount(side), rowBytes: strides[2] * 2)
                        var out = vImage_Buffer(data: dst.baseAddress, height: vImagePixelCount(side),
                                                width: vImagePixelCount(side), rowBytes: side * 4)
                        guard vImageConvert_Planar16FtoPlanarF(&src, &out, vImage_Flags(kvImageNoFlags)) == kvImageNoError
                        else { throw PBRError.badOutput("cannot convert \(name) from float16") }
                    }
                }
                return plane
            }
        }
    }

    /// vImage's high-quality scaler is Lanczos-based.
    private static func lanczos(_ plane: [Float], from: Int, to: Int) -> [Float] {
        guard from != to else { return plane }
        var src = plane
        var dst = [Float](repeating: 0, count: to * to)
        src.withUnsafeMutableBytes { s in
            dst.withUnsafeMutableBytes { d in
                var sb = vImage_Buffer(data: s.baseAddress, height: vImagePixelCount(from), width: vImagePixelCount(from),
                                       rowBytes: from * MemoryLayout<Float>.size)
                var db = vImage_Buffer(data: d.baseAddress, height: vImagePixelCount(to), width: vImagePixelCount(to),
                                       rowBytes: to * MemoryLayout<Float>.size)
                _ = vImageScale_PlanarF(&sb, &db, nil, vImage_Flags(kvImageHighQualityResampling))
            }
        }
        return dst
    }

    private static func renormalize(_ n: inout [[Float]]) {
        for i in 0..<n[0].count {
            let len = max(sqrt(n[0][i] * n[0][i] + n[1][i] * n[1][i] + n[2][i] * n[2][i]), 1e-6)
            n[0][i] /= len; n[1][i] /= len; n[2][i] /= len
        }
    }

    private static func writePNG(_ planes: [[Float]], side: Int, colour: Bool, to url: URL) throws {
        let channels = planes.count == 1 ? 1 : 3
        var bytes = [UInt8](repeating: 0, count: side * side * channels)
        for i in 0..<(side * side) {
            for c in 0..<channels {
                bytes[i * channels + c] = UInt8((min(max(planes[c][i], 0), 1) * 255).rounded())
            }
        }
        let space = channels == 1 ? CGColorSpaceCreateDeviceGray()
            : colour ? CGColorSpace(name: CGColorSpace.sRGB)! : CGColorSpaceCreateDeviceRGB()  // device RGB: no profile
        guard let provider = CGDataProvider(data: Data(bytes) as CFData),
              let image = CGImage(width: side, height: side, bitsPerComponent: 8, bitsPerPixel: 8 * channels,
                                  bytesPerRow: side * channels, space: space, bitmapInfo: CGBitmapInfo(rawValue: 0),
                                  provider: provider, decode: nil, shouldInterpolate: false, intent: .defaultIntent),
              let dest = CGImageDestinationCreateWithURL(url as CFURL, UTType.png.identifier as CFString, 1, nil)
        else { throw PBRError.badOutput("cannot encode \(url.lastPathComponent)") }
        CGImageDestinationAddImage(dest, image, nil)
        guard CGImageDestinationFinalize(dest) else { throw PBRError.badOutput("cannot write \(url.path)") }
    }
}
