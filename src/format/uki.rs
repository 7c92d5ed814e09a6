//! The unified kernel image (UKI): systemd's EFI stub with the os-release, the command line, the
//! initrd and the kernel appended as PE sections, one file that UEFI firmware starts as
//! `EFI/BOOT/BOOTX64.EFI` and that boots the image with no bootloader configuration.
//!
//! What `ukify` (or `objcopy --add-section`) does, with `object` reading the stub: the section
//! headers go into the room the stub leaves after its own, the data is appended at the end of
//! the file (aligned to `FileAlignment`), each section gets the next free virtual address (aligned
//! to `SectionAlignment`), and `SizeOfImage` and the header checksum are updated. `.linux` comes
//! last, as ukify places it, so the kernel sits at the highest addresses.

use object::LittleEndian as LE;
use object::pe::{
    IMAGE_SCN_CNT_INITIALIZED_DATA, IMAGE_SCN_MEM_READ, ImageFileHeader, ImageOptionalHeader64,
    ImageSectionHeader,
};
use object::read::pe::{ImageNtHeaders, PeFile64};

use super::FormatError;

/// The parts of a UKI besides the stub.
#[derive(Clone, Copy, Debug)]
pub struct UkiParts<'a> {
    /// An os-release file (`NAME=...`), shown by boot menus.
    pub osrel: &'a [u8],
    pub cmdline: &'a str,
    pub initrd: &'a [u8],
    pub kernel: &'a [u8],
}

fn bad(message: impl Into<String>) -> FormatError {
    FormatError::Uki(message.into())
}

/// The os-release a UKI carries when the image has none of its own.
pub fn default_osrel(name: &str) -> Vec<u8> {
    format!("NAME=\"Slipway\"\nID=slipway\nPRETTY_NAME=\"Slipway image {name}\"\n").into_bytes()
}

/// Builds the UKI from systemd's `linuxx64.efi.stub`.
pub fn build(stub: &[u8], parts: UkiParts) -> Result<Vec<u8>, FormatError> {
    let pe = PeFile64::parse(stub)
        .map_err(|e| bad(format!("the EFI stub is not a PE32+ image: {e}")))?;
    let nt = pe.nt_headers();
    let opt = nt.optional_header();
    let section_align = opt.section_alignment.get(LE) as u64;
    let file_align = opt.file_alignment.get(LE) as u64;
    let headers_size = opt.size_of_headers.get(LE) as u64;
    if !section_align.is_power_of_two() || !file_align.is_power_of_two() {
        return Err(bad("the EFI stub's alignments are not powers of two"));
    }
    let dos_lfanew = u32::from_le_bytes(stub[0x3c..0x40].try_into().expect("4 bytes")) as usize;
    let file_header_at = dos_lfanew + 4;
    let optional_at = file_header_at + size_of::<ImageFileHeader>();
    let table_at = optional_at + nt.file_header().size_of_optional_header.get(LE) as usize;
    let sections: Vec<&ImageSectionHeader> = pe.section_table().iter().collect();
    let new: [(&[u8; 8], &[u8]); 4] = [
        (b".osrel\0\0", parts.osrel),
        (b".cmdline", parts.cmdline.as_bytes()),
        (b".initrd\0", parts.initrd),
        (b".linux\0\0", parts.kernel),
    ];
    let table_end = table_at + (sections.len() + new.len()) * size_of::<ImageSectionHeader>();
    let first_data = sections
        .iter()
        .map(|s| s.pointer_to_raw_data.get(LE) as u64)
        .filter(|p| *p != 0)
        .min()
        .unwrap_or(headers_size);
    if table_end as u64 > headers_size.min(first_data) {
        return Err(bad(format!(
            "the EFI stub has no room for {} more section headers",
            new.len()
        )));
    }
    let align = |n: u64, a: u64| n.div_ceil(a) * a;
    let mut vma = align(
        sections
            .iter()
            .map(|s| {
                s.virtual_address.get(LE) as u64
                    + (s.virtual_size.get(LE) as u64).max(s.size_of_raw_data.get(LE) as u64)
            })
            .max()
            .unwrap_or(headers_size),
        section_align,
    );
    let file_end = sections
        .iter()
        .map(|s| s.pointer_to_raw_data.get(LE) as u64 + s.size_of_raw_data.get(LE) as u64)
        .max()
        .unwrap_or(headers_size)
        .max(stub.len() as u64);
    let mut out = stub[..file_end as usize].to_vec();
    out.resize(align(file_end, file_align) as usize, 0);
    let mut initialized = opt.size_of_initialized_data.get(LE) as u64;
    for (i, (name, data)) in new.iter().enumerate() {
        let raw_size = align(data.len() as u64, file_align);
        let header = ImageSectionHeader {
            name: **name,
            virtual_size: object::U32::new(LE, u32_of(data.len() as u64, name)?),
            virtual_address: object::U32::new(LE, u32_of(vma, name)?),
            size_of_raw_data: object::U32::new(LE, u32_of(raw_size, name)?),
            pointer_to_raw_data: object::U32::new(LE, u32_of(out.len() as u64, name)?),
            pointer_to_relocations: object::U32::new(LE, 0),
            pointer_to_linenumbers: object::U32::new(LE, 0),
            number_of_relocations: object::U16::new(LE, 0),
            number_of_linenumbers: object::U16::new(LE, 0),
            characteristics: object::U32::new(
                LE,
                IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ,
            ),
        };
        let at = table_at + (sections.len() + i) * size_of::<ImageSectionHeader>();
        out[at..at + size_of::<ImageSectionHeader>()]
            .copy_from_slice(object::pod::bytes_of(&header));
        out.extend_from_slice(data);
        out.resize(out.len() + (raw_size as usize - data.len()), 0);
        vma = align(vma + data.len() as u64, section_align);
        initialized += raw_size;
    }
    let count = u16::try_from(sections.len() + new.len()).map_err(|_| bad("too many sections"))?;
    let set = |out: &mut Vec<u8>, at: usize, bytes: &[u8]| {
        out[at..at + bytes.len()].copy_from_slice(bytes)
    };
    set(
        &mut out,
        file_header_at + std::mem::offset_of!(ImageFileHeader, number_of_sections),
        &count.to_le_bytes(),
    );
    let field = |offset: usize| optional_at + offset;
    set(
        &mut out,
        field(std::mem::offset_of!(ImageOptionalHeader64, size_of_image)),
        &u32_of(vma, b"image\0\0\0")?.to_le_bytes(),
    );
    set(
        &mut out,
        field(std::mem::offset_of!(
            ImageOptionalHeader64,
            size_of_initialized_data
        )),
        &(initialized.min(u32::MAX as u64) as u32).to_le_bytes(),
    );
    // UEFI does not check it; a stale one would be wrong.
    set(
        &mut out,
        field(std::mem::offset_of!(ImageOptionalHeader64, check_sum)),
        &0u32.to_le_bytes(),
    );
    Ok(out)
}

fn u32_of(n: u64, what: &[u8; 8]) -> Result<u32, FormatError> {
    u32::try_from(n).map_err(|_| {
        bad(format!(
            "{} does not fit a PE image (4 GiB at most)",
            String::from_utf8_lossy(what).trim_end_matches('\0')
        ))
    })
}

/// The virtual address and size of each section (for tests and diagnostics).
pub fn sections(image: &[u8]) -> Result<Vec<(String, u32, u32)>, FormatError> {
    let pe = PeFile64::parse(image).map_err(|e| bad(e.to_string()))?;
    Ok(pe
        .section_table()
        .iter()
        .map(|s| {
            (
                String::from_utf8_lossy(&s.name)
                    .trim_end_matches('\0')
                    .to_string(),
                s.virtual_address.get(LE),
                s.virtual_size.get(LE),
            )
        })
        .collect())
}
