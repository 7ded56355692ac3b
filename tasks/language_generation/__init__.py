"""Language generation: the embedded generated `toy_mt` corpus, WMT14 En-De, OpenSubtitles2012, Marian
seq2seq Transformers, BLEU."""

from tasks.language_generation.task import LanguageGenerationConfig, LanguageGenerationTask

__all__ = ["LanguageGenerationConfig", "LanguageGenerationTask"]
