"""Fine-tuning and evaluation of the field-pair model, and the retrain/evaluate flow the
``train`` queue's tasks call.

``data``        labels -> field-pair examples, the stored split, generic pair files
``encoding``    the model loaded for training, each distinct text encoded once
``trainers``    the two ways to train (``head``, ``full``), and saving a trained model
``evaluation``  metrics on the evaluation split; the evaluator declares its primary metric
``promotion``   retrain / evaluate against the registry; promotion reads the declared metric

Training data
    Labelled matches (resume, job, score) with the field pairs each one uses
    (``shared.fields.usable_pairs``: the same texts the workers embed); generic pair files
    add one-pair examples. A retrain trains on matches whose resume and job are both on the
    training side of the stored splits (``shared.repository.labels``), so held-out resumes
    and held-out jobs are both unseen.

The objective is the served score (``match_loss``): a match's score, the weighted mean of its
pair cosines (``workers.scoring.weighted_mean``), against its target, squared error: the
label's rank among the training matches on the label's scale by default
(``data.rank_targets``; ``TrainParams.target``). The pair-type weights are learned with it
and stored with the version. Two ways to train, both
ending in a sentence-transformers directory the workers load as is:
    ``full``  sentence-transformers' trainer on all weights, the match-level loss over all of
              a batch of matches' texts at once (GPU; a time budget bounds it on a CPU).
    ``head``  the encoder frozen, a two-layer head (Dense tanh -> Dense) trained on cached
              embeddings of the unique texts, 400 full-batch steps with dropout and weight
              decay (early stopping optional: ``head_val_fraction``): minutes on a CPU. Saved as
              sentence-transformers ``Dense`` modules, so serving needs nothing new.
    ``full+head`` the first, then the second on top.

Evaluation (any model, a stored evaluation split): match-level Spearman/Pearson of the match
score vs its label, field-pair Pearson/Spearman, NDCG@10 of jobs ranked per resume. The
evaluator declares its primary metric (match-level Spearman) and direction (greater is
better); promotion reads them, on held-out resumes and on held-out jobs.
"""
