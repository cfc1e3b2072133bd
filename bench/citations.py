"""BibTeX for the plugins' papers, so a report can `\\cite{}` them and write the .bib beside its tables.

A plugin names its papers with a class attribute `cite`: one BibTeX key, or several joined by
commas as in `\\cite{a,b}`. Built-in keys resolve to the entries below. A third-party plugin either
uses one of these keys or carries its own entries in a `bibtex` attribute (a string of one or more
BibTeX entries; their keys are cited when `cite` is absent). A plugin with neither is simply not
cited.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from bench.config import ConfigError
from bench.registry import ATTACKS, DEFENSES, defense_parts

BIBTEX = {
    "huang2021unlearnable": """@inproceedings{huang2021unlearnable,
  title     = {Unlearnable Examples: Making Personal Data Unexploitable},
  author    = {Huang, Hanxun and Ma, Xingjun and Erfani, Sarah Monazam and Bailey, James and Wang, Yisen},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2021}
}""",
    "fowl2021adversarial": """@inproceedings{fowl2021adversarial,
  title     = {Adversarial Examples Make Strong Poisons},
  author    = {Fowl, Liam and Goldblum, Micah and Chiang, Ping-yeh and Geiping, Jonas and Czaja, Wojciech and Goldstein, Tom},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year      = {2021}
}""",
    "tao2021better": """@inproceedings{tao2021better,
  title     = {Better Safe Than Sorry: Preventing Delusive Adversaries with Adversarial Training},
  author    = {Tao, Lue and Feng, Lei and Yi, Jinfeng and Huang, Sheng-Jun and Chen, Songcan},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year      = {2021}
}""",
    "chen2023self": """@inproceedings{chen2023self,
  title     = {Self-Ensemble Protection: Training Checkpoints Are Good Data Protectors},
  author    = {Chen, Sizhe and Yuan, Geng and Cheng, Xinwen and Gong, Yifan and Qin, Minghai and Wang, Yanzhi and Huang, Xiaolin},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2023}
}""",
    "fu2022robust": """@inproceedings{fu2022robust,
  title     = {Robust Unlearnable Examples: Protecting Data Against Adversarial Learning},
  author    = {Fu, Shaopeng and He, Fengxiang and Liu, Yang and Shen, Li and Tao, Dacheng},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2022}
}""",
    "yu2022availability": """@inproceedings{yu2022availability,
  title     = {Availability Attacks Create Shortcuts},
  author    = {Yu, Da and Zhang, Huishuai and Chen, Wei and Yin, Jian and Liu, Tie-Yan},
  booktitle = {Proceedings of the 28th ACM SIGKDD Conference on Knowledge Discovery and Data Mining (KDD)},
  year      = {2022}
}""",
    "wu2023onepixel": """@inproceedings{wu2023onepixel,
  title     = {One-Pixel Shortcut: On the Learning Preference of Deep Neural Networks},
  author    = {Wu, Shutong and Chen, Sizhe and Xie, Cihang and Huang, Xiaolin},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2023}
}""",
    "sandovalsegura2022autoregressive": """@inproceedings{sandovalsegura2022autoregressive,
  title     = {Autoregressive Perturbations for Data Poisoning},
  author    = {Sandoval-Segura, Pedro and Singla, Vasu and Geiping, Jonas and Goldblum, Micah and Goldstein, Tom and Jacobs, David},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  volume    = {35},
  pages     = {27374--27386},
  year      = {2022}
}""",
    "sadasivan2023cuda": """@inproceedings{sadasivan2023cuda,
  title     = {{CUDA}: Convolution-Based Unlearnable Datasets},
  author    = {Sadasivan, Vinu Sankar and Soltanolkotabi, Mahdi and Feizi, Soheil},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  pages     = {3862--3871},
  year      = {2023}
}""",
    "zhu2026why": """@inproceedings{zhu2026why,
  title     = {Why Do Unlearnable Examples Work: A Novel Perspective of Mutual Information},
  author    = {Zhu, Yifan and Miao, Yibo and Dong, Yinpeng and Gao, Xiao-Shan},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2026},
  note      = {arXiv:2603.03725}
}""",
    "madry2018towards": """@inproceedings{madry2018towards,
  title     = {Towards Deep Learning Models Resistant to Adversarial Attacks},
  author    = {Madry, Aleksander and Makelov, Aleksandar and Schmidt, Ludwig and Tsipras, Dimitris and Vladu, Adrian},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2018}
}""",
    "zhang2018mixup": """@inproceedings{zhang2018mixup,
  title     = {mixup: Beyond Empirical Risk Minimization},
  author    = {Zhang, Hongyi and Cisse, Moustapha and Dauphin, Yann N. and Lopez-Paz, David},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2018}
}""",
    "devries2017improved": """@article{devries2017improved,
  title   = {Improved Regularization of Convolutional Neural Networks with Cutout},
  author  = {DeVries, Terrance and Taylor, Graham W.},
  journal = {arXiv preprint arXiv:1708.04552},
  year    = {2017}
}""",
    "yun2019cutmix": """@inproceedings{yun2019cutmix,
  title     = {CutMix: Regularization Strategy to Train Strong Classifiers with Localizable Features},
  author    = {Yun, Sangdoo and Han, Dongyoon and Oh, Seong Joon and Chun, Sanghyuk and Choe, Junsuk and Yoo, Youngjoon},
  booktitle = {Proceedings of the IEEE/CVF International Conference on Computer Vision (ICCV)},
  year      = {2019}
}""",
    "liu2023image": """@inproceedings{liu2023image,
  title     = {Image Shortcut Squeezing: Countering Perturbative Availability Poisons with Compression},
  author    = {Liu, Zhuoran and Zhao, Zhengyu and Larson, Martha},
  booktitle = {Proceedings of the 40th International Conference on Machine Learning (ICML)},
  year      = {2023}
}""",
    "xu2018feature": """@inproceedings{xu2018feature,
  title     = {Feature Squeezing: Detecting Adversarial Examples in Deep Neural Networks},
  author    = {Xu, Weilin and Evans, David and Qi, Yanjun},
  booktitle = {Network and Distributed System Security Symposium (NDSS)},
  year      = {2018}
}""",
    "qin2023apbench": """@article{qin2023apbench,
  title   = {{APBench}: A Unified Benchmark for Availability Poisoning Attacks and Defenses},
  author  = {Qin, Tianrui and Gao, Xitong and Zhao, Juanjuan and Ye, Kejiang and Xu, Cheng-Zhong},
  journal = {arXiv preprint arXiv:2308.03258},
  year    = {2023}
}""",
    "qin2023learning": """@article{qin2023learning,
  title   = {Learning the Unlearnable: Adversarial Augmentations Suppress Unlearnable Example Attacks},
  author  = {Qin, Tianrui and Gao, Xitong and Zhao, Juanjuan and Ye, Kejiang and Xu, Cheng-Zhong},
  journal = {arXiv preprint arXiv:2303.15127},
  year    = {2023}
}""",
    "sandovalsegura2023what": """@inproceedings{sandovalsegura2023what,
  title     = {What Can We Learn from Unlearnable Datasets?},
  author    = {Sandoval-Segura, Pedro and Singla, Vasu and Geiping, Jonas and Goldblum, Micah and Goldstein, Tom},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year      = {2023}
}""",
    "yu2024purify": """@inproceedings{yu2024purify,
  title     = {Purify Unlearnable Examples via Rate-Constrained Variational Autoencoders},
  author    = {Yu, Yi and Wang, Yufei and Xia, Song and Yang, Wenhan and Lu, Shijian and Tan, Yap-Peng and Kot, Alex C.},
  booktitle = {Proceedings of the 41st International Conference on Machine Learning (ICML)},
  year      = {2024}
}""",
    "prechelt1998early": """@incollection{prechelt1998early,
  title     = {Early Stopping -- But When?},
  author    = {Prechelt, Lutz},
  booktitle = {Neural Networks: Tricks of the Trade},
  series    = {Lecture Notes in Computer Science},
  volume    = {1524},
  pages     = {55--69},
  publisher = {Springer},
  year      = {1998}
}""",
}

_ENTRY_START = re.compile(r"(?=@\w+\s*\{)")  # splits a .bib text before each entry
_ENTRY_KEY = re.compile(r"@\w+\s*\{\s*([^,\s]+)\s*,")


@dataclass(frozen=True)
class Citation:
    keys: tuple[str, ...]  # what goes into \cite{...}
    entries: dict[str, str]  # key -> BibTeX entry, for the .bib


def plugin_citation(plugin: object) -> Citation:
    """The keys and entries a plugin class names through `cite` and `bibtex`."""
    pieces = [piece.strip() for piece in _ENTRY_START.split(getattr(plugin, "bibtex", "") or "")]
    own = {key.group(1): piece for piece in pieces if (key := _ENTRY_KEY.match(piece))}
    cite = getattr(plugin, "cite", "") or ""
    keys = tuple(k.strip() for k in cite.split(",") if k.strip()) if cite else tuple(own)
    entries = {key: own.get(key) or BIBTEX.get(key) for key in keys}
    missing = [key for key, entry in entries.items() if entry is None]
    if missing:
        raise ConfigError(f"{getattr(plugin, 'name', plugin)}.cite: no BibTeX entry for {missing[0]!r}; "
                          f"use a key of bench.citations.BIBTEX ({', '.join(sorted(BIBTEX))}) or give the entry in `bibtex`")
    return Citation(keys, entries)


def citation(kind: str, name: str) -> Citation:
    """Citation of the attack or defense `name` (kind 'attack' or 'defense'); `a+b` cites both parts.

    A name that is not registered here (a record from someone else's plugin) is not cited.
    """
    registry = {"attack": ATTACKS, "defense": DEFENSES}.get(kind)
    if registry is None:
        raise ValueError(f"kind must be 'attack' or 'defense', got {kind!r}")
    keys: list[str] = []
    entries: dict[str, str] = {}
    for part in defense_parts(name) if kind == "defense" else [name]:
        if part not in registry:
            continue
        found = plugin_citation(registry.get(part))
        keys += [k for k in found.keys if k not in keys]
        entries.update(found.entries)
    return Citation(tuple(keys), entries)


def bibliography(citations) -> str:
    """One .bib text holding every entry of `citations`, each once, sorted by key."""
    entries: dict[str, str] = {}
    for c in citations:
        entries.update(c.entries)
    return "\n\n".join(entries[k] for k in sorted(entries)) + ("\n" if entries else "")
