//! The avatar pipeline, one library for the `avatar` guest (compiled to
//! WebAssembly) and its native baseline (`avatar` binary, the same code):
//! an uploaded JPEG, PNG or WebP becomes a square thumbnail.
//!
//! 1. *Sniff* the format from the first bytes (not from a header a client
//!    sets): anything else is [`AvatarError::NotAnImage`].
//! 2. *Check the header* before decoding: the dimensions are read without
//!    decoding pixels, and an image over [`Limits::max_pixels`] is refused
//!    ([`AvatarError::TooLarge`]) before a byte is allocated for it. The
//!    decoder also runs under an allocation cap, so a small file that
//!    claims reasonable dimensions but inflates beyond them cannot either.
//! 3. *Decode*: a large JPEG shrunk on load (at 1/2, 1/4 or 1/8 in the
//!    inverse DCT, see [`SHRINK_GAP`]), anything else at full size.
//! 4. *Crop* the centre square and *resize* it to `size`×`size` with a
//!    Lanczos3 filter (`fast_image_resize`, reading the square in place;
//!    SIMD where the target has it: SSE4.1/AVX2 natively, `simd128` in
//!    WebAssembly).
//! 5. *Orient* the result by the EXIF tag (phone photos are stored
//!    sideways with a tag saying so): a centre crop commutes with the
//!    rotations and flips, so only the avatar is turned.
//! 6. *Encode* as JPEG (`quality`) or WebP (lossless: what the `image`
//!    crate's encoder writes), and an ETag of the output.
//!
//! Each stage's time is in [`Avatar::timings`].

use std::io::Cursor;
use std::time::{Duration, Instant};

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::codecs::jpeg::JpegEncoder;
use image::codecs::webp::WebPEncoder;
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};
use sha2::{Digest, Sha256};

/// What a request may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Side of the square output, in pixels.
    pub size: u32,
    pub format: Output,
    /// JPEG quality, 1..=100.
    pub quality: u8,
    /// Decode large JPEGs shrunk (see [`SHRINK_GAP`]); `false` decodes
    /// every image at full size (the tool's `--full`, to compare).
    pub shrink_on_load: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            size: 256,
            format: Output::Jpeg,
            quality: 80,
            shrink_on_load: true,
        }
    }
}

/// The smallest and largest `size` allowed.
pub const SIZES: std::ops::RangeInclusive<u32> = 32..=1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Jpeg,
    Webp,
}

impl Output {
    pub fn content_type(self) -> &'static str {
        match self {
            Output::Jpeg => "image/jpeg",
            Output::Webp => "image/webp",
        }
    }
}

/// What an upload may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest upload, in bytes.
    pub max_upload_bytes: usize,
    /// Most pixels a decoded image may have (width × height).
    pub max_pixels: u64,
    /// Most bytes the decoder may allocate.
    pub max_alloc_bytes: u64,
}

impl Default for Limits {
    /// 10 MiB uploads; 25 megapixels (a 24 MP camera photo; a 48 MP one is
    /// not an avatar); 128 MiB for the decoder, enough for 25 MP of RGBA.
    /// The pipeline holds at most two full-size buffers at once (a decoded
    /// image and its RGB conversion), so an app with 512 MiB of memory
    /// serves the largest accepted image.
    fn default() -> Limits {
        Limits {
            max_upload_bytes: 10 << 20,
            max_pixels: 25_000_000,
            max_alloc_bytes: 128 << 20,
        }
    }
}

/// Why an upload was refused; each kind has its HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AvatarError {
    /// Not a JPEG, PNG or WebP (415).
    NotAnImage,
    /// Over the upload cap, or dimensions over the pixel cap (413).
    TooLarge(String),
    /// Truncated or corrupt (400).
    Corrupt(String),
    /// A valid request the pipeline cannot serve (422): a bad option, or
    /// an image that would decode past the allocation cap.
    Unprocessable(String),
}

impl AvatarError {
    pub fn status(&self) -> u16 {
        match self {
            AvatarError::NotAnImage => 415,
            AvatarError::TooLarge(_) => 413,
            AvatarError::Corrupt(_) => 400,
            AvatarError::Unprocessable(_) => 422,
        }
    }
}

impl std::fmt::Display for AvatarError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AvatarError::NotAnImage => {
                write!(f, "the upload is not a JPEG, PNG or WebP image")
            }
            AvatarError::TooLarge(m) | AvatarError::Corrupt(m) | AvatarError::Unprocessable(m) => {
                write!(f, "{m}")
            }
        }
    }
}

impl std::error::Error for AvatarError {}

/// A finished avatar.
#[derive(Debug, Clone)]
pub struct Avatar {
    pub bytes: Vec<u8>,
    pub content_type: &'static str,
    /// A strong ETag of `bytes` (quoted).
    pub etag: String,
    /// The input's dimensions, before orientation.
    pub source: (u32, u32),
    /// The dimensions it was decoded at: smaller than `source` when a
    /// JPEG was shrunk on load.
    pub decoded: (u32, u32),
    /// Where the time went.
    pub timings: Timings,
}

/// How long each stage of [`process`] took: what the guest reports in its
/// `server-timing` header and the bench sets against the native run.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    /// Sniffing, the header and decoding.
    pub decode: Duration,
    /// Cropping, resizing and turning as the EXIF orientation says.
    pub resize: Duration,
    /// Encoding and the ETag.
    pub encode: Duration,
}

impl Timings {
    /// As a `server-timing` header's entries (milliseconds).
    pub fn header(&self) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        format!(
            "decode;dur={:.2}, resize;dur={:.2}, encode;dur={:.2}",
            ms(self.decode),
            ms(self.resize),
            ms(self.encode)
        )
    }
}

/// The input format, from its first bytes.
pub fn sniff(bytes: &[u8]) -> Result<ImageFormat, AvatarError> {
    match image::guess_format(bytes) {
        Ok(format @ (ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::WebP)) => Ok(format),
        _ => Err(AvatarError::NotAnImage),
    }
}

fn corrupt(err: image::ImageError) -> AvatarError {
    match err {
        image::ImageError::Limits(e) => AvatarError::Unprocessable(format!(
            "the image would take more memory to decode than allowed ({e})"
        )),
        image::ImageError::Unsupported(e) => {
            AvatarError::Unprocessable(format!("this image is not supported: {e}"))
        }
        other => AvatarError::Corrupt(format!("the image is truncated or corrupt: {other}")),
    }
}

/// Make the avatar of `upload`.
pub fn process(upload: &[u8], options: Options, limits: Limits) -> Result<Avatar, AvatarError> {
    if upload.len() > limits.max_upload_bytes {
        return Err(AvatarError::TooLarge(format!(
            "the upload is {} bytes; at most {} are accepted",
            upload.len(),
            limits.max_upload_bytes
        )));
    }
    if !SIZES.contains(&options.size) {
        return Err(AvatarError::Unprocessable(format!(
            "size must be {} to {}, got {}",
            SIZES.start(),
            SIZES.end(),
            options.size
        )));
    }
    if !(1..=100).contains(&options.quality) {
        return Err(AvatarError::Unprocessable(format!(
            "quality must be 1 to 100, got {}",
            options.quality
        )));
    }
    let start = Instant::now();
    let format = sniff(upload)?;
    let jpeg = (format == ImageFormat::Jpeg).then(|| markers(upload));
    if jpeg.as_ref().is_some_and(|m| !m.whole) {
        // The JPEG decoder fills what is missing with grey: a cut-off
        // upload would come back as a half-grey avatar.
        return Err(AvatarError::Corrupt(
            "the JPEG is truncated: it has no end-of-image marker after its image data".into(),
        ));
    }
    let shrunk = match jpeg {
        Some(markers) if options.shrink_on_load => {
            decode_jpeg_shrunk(upload, markers.scans, options.size, limits)?
        }
        _ => None,
    };
    let (decoded, orientation, (width, height)) = match shrunk {
        Some(decoded) => decoded,
        None => decode(upload, format, limits)?,
    };
    let decoded_at = Instant::now();
    let decoded_size = (decoded.width(), decoded.height());
    // The centre square, resized, then oriented: cropping the centre
    // commutes with the EXIF rotations and flips, so only the avatar is
    // turned, not the photo.
    let mut resized = resize_centre(decoded.into_rgb8(), options.size)?;
    resized.apply_orientation(orientation);
    let resized_at = Instant::now();
    let bytes = encode(&resized, options)?;
    let etag = format!("\"{}\"", hex(&Sha256::digest(&bytes)[..16]));
    Ok(Avatar {
        bytes,
        content_type: options.format.content_type(),
        etag,
        source: (width, height),
        decoded: decoded_size,
        timings: Timings {
            decode: decoded_at - start,
            resize: resized_at - decoded_at,
            encode: resized_at.elapsed(),
        },
    })
}

/// A decoded upload: its pixels, its EXIF orientation (not yet applied)
/// and its dimensions as stored.
type Decoded = (DynamicImage, Orientation, (u32, u32));

/// Refuse an image whose header claims more than `limits` allow, before
/// a pixel is allocated for it.
fn check_dimensions(width: u32, height: u32, limits: Limits) -> Result<(), AvatarError> {
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_pixels || width == 0 || height == 0 {
        return Err(AvatarError::TooLarge(format!(
            "the image is {width}×{height} ({:.1} megapixels); at most {:.1} are accepted",
            pixels as f64 / 1e6,
            limits.max_pixels as f64 / 1e6
        )));
    }
    Ok(())
}

/// Decode any accepted format at full size (the `image` crate's decoders,
/// under the allocation cap).
fn decode(upload: &[u8], format: ImageFormat, limits: Limits) -> Result<Decoded, AvatarError> {
    // The header first, with no limit of the decoder's own (so that a bomb
    // is refused here, saying its size); then the allocation cap.
    let mut reader = ImageReader::with_format(Cursor::new(upload), format);
    reader.no_limits();
    let mut decoder = reader.into_decoder().map_err(corrupt)?;
    let (width, height) = decoder.dimensions();
    check_dimensions(width, height, limits)?;
    let mut caps = image::Limits::default();
    caps.max_alloc = Some(limits.max_alloc_bytes);
    decoder.set_limits(caps).map_err(corrupt)?;
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let decoded = DynamicImage::from_decoder(decoder).map_err(corrupt)?;
    Ok((decoded, orientation, (width, height)))
}

/// How much larger than the avatar the decoded square stays when a JPEG is
/// shrunk on load, so that Lanczos3 still has the detail to filter (the
/// `reducing_gap` Pillow's thumbnails use).
pub const SHRINK_GAP: u32 = 2;

/// Most scans a JPEG may have to be shrunk on load: each progressive scan
/// walks every block, and a scan header is ten bytes (the limit zune-jpeg,
/// the general decoder, has by default).
const MAX_SCANS: usize = 100;

/// Shrink-on-load for JPEG: decode at 1/2, 1/4 or 1/8 of the size in the
/// DCT itself (the `jpeg-decoder` crate's scaled IDCT), the largest
/// reduction that keeps the shorter side at least [`SHRINK_GAP`] times
/// `size`. A 12 MP photo becomes a 256×256 avatar from 0.75 MP of pixels:
/// the inverse DCT, colour conversion and resize do a sixteenth of the
/// work.
///
/// Only for what it does well: 8-bit grey or YCbCr DCT (baseline or
/// progressive) JPEGs, of at most [`MAX_SCANS`] scans, whose coefficients
/// (a progressive JPEG keeps them all, at full size) fit the allocation
/// cap. Anything else, and any error, is `None`: the general decoder then
/// decodes it (or says what is wrong with it), as for every other image.
/// Only the header's dimension check answers here.
/// `scans` is the upload's start-of-scan count, from [`markers`].
fn decode_jpeg_shrunk(
    upload: &[u8],
    scans: usize,
    size: u32,
    limits: Limits,
) -> Result<Option<Decoded>, AvatarError> {
    use jpeg_decoder::{CodingProcess, Decoder, PixelFormat};
    let mut decoder = Decoder::new(upload);
    if decoder.read_info().is_err() {
        return Ok(None);
    }
    let Some(info) = decoder.info() else {
        return Ok(None);
    };
    let (width, height) = (u32::from(info.width), u32::from(info.height));
    check_dimensions(width, height, limits)?;
    let channels: u64 = match info.pixel_format {
        PixelFormat::L8 => 1,
        PixelFormat::RGB24 => 3,
        _ => return Ok(None),
    };
    let need = size.saturating_mul(SHRINK_GAP);
    let coefficients = u64::from(width) * u64::from(height) * channels * 2;
    let dct = match info.coding_process {
        CodingProcess::DctSequential => true,
        CodingProcess::DctProgressive => coefficients <= limits.max_alloc_bytes,
        CodingProcess::Lossless => false,
    };
    if width.min(height) < need * 2 || !dct || scans > MAX_SCANS {
        return Ok(None);
    }
    // The decoder picks the smallest scale that keeps either side at least
    // what is asked: ask for the shorter side only.
    let need = u16::try_from(need).unwrap_or(u16::MAX);
    let asked = if width <= height {
        (need, u16::MAX)
    } else {
        (u16::MAX, need)
    };
    let Ok((w, h)) = decoder.scale(asked.0, asked.1) else {
        return Ok(None);
    };
    let (w, h) = (u32::from(w), u32::from(h));
    decoder.set_max_decoding_buffer_size(
        usize::try_from(limits.max_alloc_bytes).unwrap_or(usize::MAX),
    );
    let Ok(pixels) = decoder.decode() else {
        return Ok(None);
    };
    if pixels.len() as u64 != u64::from(w) * u64::from(h) * channels {
        return Ok(None);
    }
    let image = match channels {
        1 => image::GrayImage::from_raw(w, h, pixels).map(DynamicImage::ImageLuma8),
        _ => image::RgbImage::from_raw(w, h, pixels).map(DynamicImage::ImageRgb8),
    };
    let Some(image) = image else {
        return Ok(None);
    };
    let orientation = decoder
        .exif_data()
        .and_then(Orientation::from_exif_chunk)
        .unwrap_or(Orientation::NoTransforms);
    Ok(Some((image, orientation, (width, height))))
}

/// What one pass over a JPEG's bytes says of its markers.
struct Markers {
    /// Start-of-scan markers (bytes that look like one inside other
    /// segments count too: more, never fewer).
    scans: usize,
    /// An end-of-image marker follows the last start-of-scan (data a
    /// camera appends after it is allowed).
    whole: bool,
}

fn markers(bytes: &[u8]) -> Markers {
    let (mut scans, mut last_scan, mut last_end) = (0, None, None);
    for (at, pair) in bytes.windows(2).enumerate() {
        match pair {
            [0xFF, 0xDA] => {
                scans += 1;
                last_scan = Some(at);
            }
            [0xFF, 0xD9] => last_end = Some(at),
            _ => {}
        }
    }
    Markers {
        scans,
        whole: matches!((last_scan, last_end), (Some(scan), Some(end)) if end > scan),
    }
}

/// The centre square of `image`, resized to `size`×`size` with Lanczos3
/// (the resizer reads the square in place: no copy of the photo).
fn resize_centre(image: image::RgbImage, size: u32) -> Result<DynamicImage, AvatarError> {
    let failed =
        |e: &dyn std::fmt::Display| AvatarError::Unprocessable(format!("cannot resize: {e}"));
    let (w, h) = image.dimensions();
    let source = ImageRef::new(w, h, image.as_raw(), PixelType::U8x3).map_err(|e| failed(&e))?;
    let mut target = Image::new(size, size, PixelType::U8x3);
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3))
        .fit_into_destination(None);
    Resizer::new()
        .resize(&source, &mut target, &options)
        .map_err(|e| failed(&e))?;
    let square = image::RgbImage::from_raw(size, size, target.into_vec())
        .ok_or_else(|| failed(&"the resizer returned a short buffer"))?;
    Ok(DynamicImage::ImageRgb8(square))
}

fn encode(image: &DynamicImage, options: Options) -> Result<Vec<u8>, AvatarError> {
    let mut out = Vec::new();
    let (w, h) = (image.width(), image.height());
    let failed = |e: image::ImageError| AvatarError::Unprocessable(format!("cannot encode: {e}"));
    match options.format {
        Output::Jpeg => JpegEncoder::new_with_quality(&mut out, options.quality)
            .encode(image.as_bytes(), w, h, image::ExtendedColorType::Rgb8)
            .map_err(failed)?,
        Output::Webp => WebPEncoder::new_lossless(&mut out)
            .encode(image.as_bytes(), w, h, image::ExtendedColorType::Rgb8)
            .map_err(failed)?,
    }
    Ok(out)
}

/// `jpeg` with an EXIF segment whose orientation tag is `orientation`
/// (1 to 8), as a phone writes it: for test inputs.
pub fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    // TIFF, little-endian: header, then one IFD with one SHORT entry.
    let mut tiff = b"II*\0".to_vec();
    tiff.extend_from_slice(&8u32.to_le_bytes());
    tiff.extend_from_slice(&1u16.to_le_bytes());
    tiff.extend_from_slice(&0x0112u16.to_le_bytes());
    tiff.extend_from_slice(&3u16.to_le_bytes());
    tiff.extend_from_slice(&1u32.to_le_bytes());
    tiff.extend_from_slice(&orientation.to_le_bytes());
    tiff.extend_from_slice(&[0, 0]);
    tiff.extend_from_slice(&0u32.to_le_bytes());
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// A PNG that claims `width`×`height` pixels but holds almost nothing: a
/// decompression bomb's header, for tests (CRCs right, so only its size
/// gives it away).
pub fn png_bomb(width: u32, height: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let crc = crc32(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    // zlib: a header and one empty stored block.
    chunk(
        &mut out,
        b"IDAT",
        &[0x78, 0x01, 0x01, 0x00, 0x00, 0xFF, 0xFF],
    );
    chunk(&mut out, b"IEND", &[]);
    out
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `?size=N&format=webp&quality=Q` and an `Accept` header as options.
pub fn options_from(query: &str, accept: Option<&str>) -> Result<Options, AvatarError> {
    let mut options = Options::default();
    if accept.is_some_and(|a| a.contains("image/webp")) {
        options.format = Output::Webp;
    }
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let number = |what: &str| {
            value.parse::<u32>().map_err(|_| {
                AvatarError::Unprocessable(format!("{what} must be a whole number, got {value:?}"))
            })
        };
        match key {
            "size" => options.size = number("size")?,
            "quality" => {
                options.quality = u8::try_from(number("quality")?).unwrap_or(0);
            }
            "format" => {
                options.format = match value {
                    "jpeg" | "jpg" => Output::Jpeg,
                    "webp" => Output::Webp,
                    other => {
                        return Err(AvatarError::Unprocessable(format!(
                            "format must be jpeg or webp, got {other:?}"
                        )));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let image = image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
        });
        let mut out = Vec::new();
        DynamicImage::ImageRgb8(image)
            .write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
            .unwrap();
        out
    }

    #[test]
    fn an_image_becomes_a_square_of_the_size_asked() {
        for format in [Output::Jpeg, Output::Webp] {
            let options = Options {
                size: 64,
                format,
                ..Options::default()
            };
            let avatar = process(&png(300, 200), options, Limits::default()).unwrap();
            let back = image::load_from_memory(&avatar.bytes).unwrap();
            assert_eq!((back.width(), back.height()), (64, 64));
            assert_eq!(avatar.content_type, format.content_type());
            assert_eq!(avatar.source, (300, 200));
        }
    }

    #[test]
    fn bad_input_gets_its_status() {
        let limits = Limits::default();
        let options = Options::default();
        assert_eq!(
            process(b"hello", options, limits).unwrap_err().status(),
            415
        );
        let mut cut = png(200, 200);
        cut.truncate(cut.len() / 2);
        assert_eq!(process(&cut, options, limits).unwrap_err().status(), 400);
        let mut jpeg = Vec::new();
        image::load_from_memory(&png(200, 200))
            .unwrap()
            .write_to(&mut Cursor::new(&mut jpeg), ImageFormat::Jpeg)
            .unwrap();
        assert!(process(&jpeg, options, limits).is_ok());
        jpeg.truncate(jpeg.len() * 2 / 3);
        let err = process(&jpeg, options, limits).unwrap_err();
        assert_eq!(err.status(), 400, "{err}");
        let small = Limits {
            max_pixels: 100,
            ..limits
        };
        assert_eq!(
            process(&png(20, 20), options, small).unwrap_err().status(),
            413
        );
        let tiny = Limits {
            max_upload_bytes: 10,
            ..limits
        };
        assert_eq!(
            process(&png(20, 20), options, tiny).unwrap_err().status(),
            413
        );
        let odd = Options {
            size: 2000,
            ..options
        };
        assert_eq!(
            process(&png(20, 20), odd, limits).unwrap_err().status(),
            422
        );
    }

    #[test]
    fn exif_orientation_is_applied_and_bombs_are_refused_from_the_header() {
        // Left half red, right half blue; stored with "rotate 90° CW".
        let image = image::RgbImage::from_fn(400, 200, |x, _| {
            if x < 200 {
                image::Rgb([255, 0, 0])
            } else {
                image::Rgb([0, 0, 255])
            }
        });
        let mut jpeg = Vec::new();
        DynamicImage::ImageRgb8(image)
            .write_to(&mut Cursor::new(&mut jpeg), ImageFormat::Jpeg)
            .unwrap();
        let rotated = with_exif_orientation(&jpeg, 6);
        let options = Options {
            size: 64,
            ..Options::default()
        };
        let top = |bytes: &[u8]| {
            let out = process(bytes, options, Limits::default()).unwrap();
            image::load_from_memory(&out.bytes)
                .unwrap()
                .to_rgb8()
                .get_pixel(32, 4)
                .0
        };
        // Upright: the top of the square is half red, half blue; rotated:
        // all red (what was the left is now the top).
        assert!(
            top(&rotated)[0] > 200 && top(&rotated)[2] < 60,
            "{:?}",
            top(&rotated)
        );
        assert!(top(&jpeg)[2] > 100, "{:?}", top(&jpeg));
        let bomb = png_bomb(50_000, 50_000);
        let err = process(&bomb, options, Limits::default()).unwrap_err();
        assert_eq!(err.status(), 413, "{err}");
        assert!(bomb.len() < 100);
    }

    /// A photo-like `w`×`h` JPEG (detail in green: rings; a ramp in
    /// blue), its left half red, so orientation shows.
    fn large_jpeg(w: u32, h: u32, grey: bool) -> Vec<u8> {
        let image = image::RgbImage::from_fn(w, h, |x, y| {
            let (fx, fy) = (x as f32 / w as f32, y as f32 / h as f32);
            let ring = ((fx * 40.0).sin() * (fy * 30.0).cos() * 60.0 + 128.0) as u8;
            let red = if x < w / 2 { 220 } else { 30 };
            image::Rgb([red, ring, (fy * 255.0) as u8])
        });
        let image = if grey {
            DynamicImage::ImageLuma8(DynamicImage::ImageRgb8(image).to_luma8())
        } else {
            DynamicImage::ImageRgb8(image)
        };
        let mut out = Vec::new();
        JpegEncoder::new_with_quality(&mut out, 90)
            .encode_image(&image)
            .unwrap();
        out
    }

    fn mean_difference(a: &[u8], b: &[u8]) -> f64 {
        let (a, b) = (
            image::load_from_memory(a).unwrap().to_rgb8(),
            image::load_from_memory(b).unwrap().to_rgb8(),
        );
        assert_eq!(a.dimensions(), b.dimensions());
        let sum: u64 = a
            .as_raw()
            .iter()
            .zip(b.as_raw())
            .map(|(x, y)| u64::from(x.abs_diff(*y)))
            .sum();
        sum as f64 / a.as_raw().len() as f64
    }

    #[test]
    fn large_jpegs_are_shrunk_on_load_to_nearly_the_same_avatar() {
        let full = Options {
            shrink_on_load: false,
            ..Options::default()
        };
        for grey in [false, true] {
            // 2400×1800: the shorter side holds 256 × 2 three times over,
            // so it decodes at a half (1200×900), not a quarter (450 < 512).
            let jpeg = large_jpeg(2400, 1800, grey);
            let shrunk = process(&jpeg, Options::default(), Limits::default()).unwrap();
            assert_eq!(shrunk.source, (2400, 1800));
            assert_eq!(shrunk.decoded, (1200, 900), "grey: {grey}");
            let whole = process(&jpeg, full, Limits::default()).unwrap();
            assert_eq!(whole.decoded, (2400, 1800));
            let mean = mean_difference(&shrunk.bytes, &whole.bytes);
            assert!(mean < 2.0, "grey {grey}: mean difference {mean}");
            // EXIF orientation on the shrunk path: "rotate 90° CW" makes
            // the red left half the top (upright, it is the left).
            if !grey {
                let red = |bytes: &[u8], x: u32, y: u32| {
                    let out = process(bytes, Options::default(), Limits::default()).unwrap();
                    let out = image::load_from_memory(&out.bytes).unwrap().to_rgb8();
                    i32::from(out.get_pixel(x, y)[0])
                };
                let rotated = with_exif_orientation(&jpeg, 6);
                assert!(red(&rotated, 128, 20) - red(&rotated, 128, 235) > 120);
                assert!((red(&rotated, 20, 128) - red(&rotated, 235, 128)).abs() < 40);
                assert!(red(&jpeg, 20, 128) - red(&jpeg, 235, 128) > 120);
            }
        }
        // A small request shrinks further; a small photo is not shrunk.
        let jpeg = large_jpeg(2400, 1800, false);
        let small = Options {
            size: 64,
            ..Options::default()
        };
        assert_eq!(
            process(&jpeg, small, Limits::default()).unwrap().decoded,
            (300, 225)
        );
        let photo = large_jpeg(1000, 800, false);
        assert_eq!(
            process(&photo, Options::default(), Limits::default())
                .unwrap()
                .decoded,
            (1000, 800)
        );
        // A bomb's header is refused on this path too.
        let mut cut = jpeg.clone();
        // Claim 50,000 × 50,000 in the frame header (SOF0: FF C0, length,
        // precision, height, width).
        let sof = cut.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        cut[sof + 5..sof + 9].copy_from_slice(&[0xC3, 0x50, 0xC3, 0x50]);
        assert_eq!(
            process(&cut, Options::default(), Limits::default())
                .unwrap_err()
                .status(),
            413
        );
    }

    #[test]
    fn every_exif_orientation_gives_the_photo_turned_in_its_pixels() {
        // 1301×1030: shrunk on load at a half; the crop's margin is odd.
        let jpeg = large_jpeg(1301, 1030, false);
        let photo = image::load_from_memory(&jpeg).unwrap();
        let full = Options {
            shrink_on_load: false,
            ..Options::default()
        };
        for tag in 1..=8u8 {
            let orientation = Orientation::from_exif(tag).unwrap();
            // The reference: the photo turned in its pixels, lossless.
            let mut turned = photo.clone();
            turned.apply_orientation(orientation);
            let mut png = Vec::new();
            turned
                .write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
                .unwrap();
            let want = process(&png, full, Limits::default()).unwrap();
            let tagged = with_exif_orientation(&jpeg, u16::from(tag));
            for (path, options) in [("shrunk", Options::default()), ("full", full)] {
                let got = process(&tagged, options, Limits::default()).unwrap();
                let mean = mean_difference(&got.bytes, &want.bytes);
                assert!(mean < 2.5, "tag {tag}, {path}: mean difference {mean}");
            }
        }
    }

    #[test]
    fn jpegs_the_shrinking_decoder_leaves_alone_still_decode_or_fail_plainly() {
        let jpeg = large_jpeg(2400, 1800, false);
        // Over the scan limit: left to the general decoder, which has one.
        let mut many = jpeg[..2].to_vec();
        for _ in 0..=MAX_SCANS {
            // A comment segment holding an SOS marker's bytes.
            many.extend_from_slice(&[0xFF, 0xFE, 0x00, 0x04, 0xFF, 0xDA]);
        }
        many.extend_from_slice(&jpeg[2..]);
        let out = process(&many, Options::default(), Limits::default()).unwrap();
        assert_eq!(out.decoded, (2400, 1800));
        // Damage inside the entropy-coded data: whatever either decoder
        // makes of it, the answer is an avatar or a 400, never a panic.
        let mut damaged = jpeg.clone();
        let sos = damaged.windows(2).rposition(|w| w == [0xFF, 0xDA]).unwrap();
        for i in (sos + 40..damaged.len() - 2).step_by(997) {
            damaged[i] = 0xFF;
            damaged[i + 1] = 0xD3;
        }
        match process(&damaged, Options::default(), Limits::default()) {
            Ok(out) => assert_eq!(out.source, (2400, 1800)),
            Err(err) => assert_eq!(err.status(), 400, "{err}"),
        }
    }

    #[test]
    fn options_come_from_the_query_and_accept() {
        let o = options_from("size=128&quality=90", Some("image/webp,*/*")).unwrap();
        assert_eq!(
            o,
            Options {
                size: 128,
                format: Output::Webp,
                quality: 90,
                shrink_on_load: true,
            }
        );
        assert!(options_from("format=gif", None).is_err());
        assert!(options_from("size=big", None).is_err());
    }
}
