"""Fine-tuning and evaluation of the field-pair model, and the retrain/evaluate flow the
``train`` queue's tasks call.

``data``        labels -> field-pair examples, the stored split, generic pair files
``encoding``    the model loaded for training, each distinct text encoded once
``trainers``    the two ways to train (``head``, ``full``), and saving a trained model
``evaluation``  metrics on the evaluation split; the evaluator declares its primary metric
``promotion``   retrain / evaluate against the registry; promotion reads the declared metric

Training data
    A match label (resume, job, score) becomes field-pair examples with one documented rule:
    each field pair the match uses (``shared.fields.usable_pairs``) carries the match's label,
    the same texts the workers embed. A (sentence_0, sentence_1) that occurs in several
    matches gets the mean of their labels: that is what the squared loss converges to
    anyway, and it makes an epoch several times shorter (the real data has 38,176 field
    pairs of 1,236 texts). Generic pair files add their examples to the training side.
    The split is by resume (or by job), stored in Postgres (``shared.repository.labels``).

Two ways to train, both ending in a sentence-transformers directory the workers load as is:
    ``full``  sentence-transformers' trainer, CosineSimilarityLoss, all weights (GPU).
    ``head``  the encoder frozen, a two-layer head (Dense tanh -> Dense) trained on the
              encoder's embeddings of the unique texts with the same objective (MSE of
              cosine vs label): minutes on a CPU. The head is saved as sentence-transformers
              ``Dense`` modules, so serving needs nothing new.
    ``full+head`` the first, then the second on top.

Evaluation (any model, the stored evaluation split): field-pair Pearson/Spearman of cosine vs
label, match-level Spearman/Pearson of the match score (mean of its pair cosines) vs the match
label, NDCG@10 of jobs ranked per resume. The primary metric (match-level Spearman, greater
is better) decides promotion.
"""
