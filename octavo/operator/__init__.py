"""The Kubernetes side of octavo: the LLMService operator (kopf) and the pair validation it runs.

    crd.py          the CustomResourceDefinition, its schema and defaults (crds/ is generated)
    spec.py         a typed, defaulted view of an LLMService spec
    admission.py    checks the schema cannot express (webhook and reconcile share them)
    resources.py    pure builders: Deployment, Service, PDB, HPA, validation Job
    validation.py   vocabulary compatibility of a target and a draft (also used by the engine)
    check_pair.py   `octavo check-pair`, what the validation Job runs
    kube.py         a small dict-in, dict-out API client
    reconcile.py    one level-triggered reconcile of an LLMService
    status.py       conditions, phases, and what a Deployment's status means
    main.py         kopf handlers (`kopf run -m octavo.operator.main`)
    cli.py          `octavo operator`

Nothing here imports torch; importing the package imports nothing at all.
"""
