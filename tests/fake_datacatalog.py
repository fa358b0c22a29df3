"""A local gRPC endpoint speaking just enough of Data Catalog's Policy Tag Manager (v1) and BigQuery's
Data Policy service (v1).

Neither service has an emulator. The providers' official clients, given a gRPC channel to this
server (`FakeDataCatalog.catalog_client`, `FakeDataCatalog.policy_client`), send here exactly what
they would send to Google, serialized by the libraries' own types, so the tests see the real
requests: parents, bodies, update masks. The answers are the minimum the providers need plus the
server behaviour they must cope with, not a model of the services:

* taxonomy and policy tag ids are the server's (numbers); a create that carries a name is
  refused; a taxonomy's display name is unique (ALREADY_EXISTS, as across an organization), a
  tag's within its parent;
* deleting a taxonomy deletes its tags, and the data policies on them;
* a data policy's id is chosen and unique in the project (ALREADY_EXISTS); its policy tag must
  exist (NOT_FOUND); updates must carry an update mask and change only its paths, and
  ``policy_tag`` / ``data_policy_type`` are refused as immutable (INVALID_ARGUMENT).
"""

from __future__ import annotations

import grpc
from fake_grpc import Abort, GrpcFake, copy_message
from google.cloud import bigquery_datapolicies_v1 as dp
from google.cloud import datacatalog_v1 as dc
from google.cloud.bigquery_datapolicies_v1.services.data_policy_service.transports import (
    DataPolicyServiceGrpcTransport,
)
from google.cloud.datacatalog_v1.services.policy_tag_manager.transports import PolicyTagManagerGrpcTransport
from google.protobuf import empty_pb2


class FakeDataCatalog(GrpcFake):
    """Taxonomies, policy tags and data policies of any project and location."""

    def __init__(self) -> None:
        self.taxonomies: dict[str, dc.Taxonomy] = {}
        self.tags: dict[str, dc.PolicyTag] = {}
        self.policies: dict[str, dp.DataPolicy] = {}
        services = {
            "google.cloud.datacatalog.v1.PolicyTagManager": {
                "ListTaxonomies": (dc.ListTaxonomiesRequest, self._list_taxonomies),
                "CreateTaxonomy": (dc.CreateTaxonomyRequest, self._create_taxonomy),
                "UpdateTaxonomy": (dc.UpdateTaxonomyRequest, self._update_taxonomy),
                "DeleteTaxonomy": (dc.DeleteTaxonomyRequest, self._delete_taxonomy),
                "ListPolicyTags": (dc.ListPolicyTagsRequest, self._list_tags),
                "CreatePolicyTag": (dc.CreatePolicyTagRequest, self._create_tag),
                "UpdatePolicyTag": (dc.UpdatePolicyTagRequest, self._update_tag),
                "DeletePolicyTag": (dc.DeletePolicyTagRequest, self._delete_tag),
            },
            "google.cloud.bigquery.datapolicies.v1.DataPolicyService": {
                "ListDataPolicies": (dp.ListDataPoliciesRequest, self._list_policies),
                "CreateDataPolicy": (dp.CreateDataPolicyRequest, self._create_policy),
                "UpdateDataPolicy": (dp.UpdateDataPolicyRequest, self._update_policy),
                "DeleteDataPolicy": (dp.DeleteDataPolicyRequest, self._delete_policy),
            },
        }
        super().__init__(services, first_id=7001)

    def catalog_client(self) -> dc.PolicyTagManagerClient:
        return dc.PolicyTagManagerClient(transport=PolicyTagManagerGrpcTransport(channel=self.channel()))

    def policy_client(self) -> dp.DataPolicyServiceClient:
        return dp.DataPolicyServiceClient(transport=DataPolicyServiceGrpcTransport(channel=self.channel()))

    # -- plumbing --

    # -- taxonomies --

    def _list_taxonomies(self, request: dc.ListTaxonomiesRequest) -> dc.ListTaxonomiesResponse:
        items, token = self._page(request, [t for n, t in sorted(self.taxonomies.items())
                                            if n.startswith(request.parent + "/taxonomies/")])
        return dc.ListTaxonomiesResponse(taxonomies=items, next_page_token=token)

    def _create_taxonomy(self, request: dc.CreateTaxonomyRequest) -> dc.Taxonomy:
        taxonomy = copy_message(request.taxonomy)
        if taxonomy.name:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "name must not be set on create")
        if not taxonomy.display_name:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "display_name is required")
        if any(t.display_name == taxonomy.display_name for t in self.taxonomies.values()):
            raise Abort(grpc.StatusCode.ALREADY_EXISTS, f"a taxonomy named {taxonomy.display_name} already exists")
        taxonomy.name = f"{request.parent}/taxonomies/{self._next()}"
        self.taxonomies[taxonomy.name] = taxonomy
        return taxonomy

    def _update_taxonomy(self, request: dc.UpdateTaxonomyRequest) -> dc.Taxonomy:
        sent = request.taxonomy
        current = self.taxonomies.get(sent.name)
        if current is None:
            raise Abort(grpc.StatusCode.NOT_FOUND, f"{sent.name} not found")
        paths = list(request.update_mask.paths)
        assert paths, "headwater always sends an update mask"
        for path in paths:
            setattr(current, path, getattr(sent, path))
        return current

    def _delete_taxonomy(self, request: dc.DeleteTaxonomyRequest) -> empty_pb2.Empty:
        if self.taxonomies.pop(request.name, None) is None:
            raise Abort(grpc.StatusCode.NOT_FOUND, f"{request.name} not found")
        for tag in [t for t in self.tags if t.startswith(request.name + "/")]:
            self._drop_tag(tag)
        return empty_pb2.Empty()

    # -- policy tags --

    def _list_tags(self, request: dc.ListPolicyTagsRequest) -> dc.ListPolicyTagsResponse:
        if request.parent not in self.taxonomies:
            raise Abort(grpc.StatusCode.NOT_FOUND, f"{request.parent} not found")
        items, token = self._page(request, [t for n, t in sorted(self.tags.items())
                                            if n.startswith(request.parent + "/policyTags/")])
        return dc.ListPolicyTagsResponse(policy_tags=items, next_page_token=token)

    def _create_tag(self, request: dc.CreatePolicyTagRequest) -> dc.PolicyTag:
        if request.parent not in self.taxonomies:
            raise Abort(grpc.StatusCode.NOT_FOUND, f"{request.parent} not found")
        tag = copy_message(request.policy_tag)
        if tag.name:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "name must not be set on create")
        siblings = [t for n, t in self.tags.items() if n.startswith(request.parent + "/")
                    and t.parent_policy_tag == tag.parent_policy_tag]
        if any(t.display_name == tag.display_name for t in siblings):
            raise Abort(grpc.StatusCode.ALREADY_EXISTS, f"a policy tag named {tag.display_name} already exists")
        tag.name = f"{request.parent}/policyTags/{self._next()}"
        self.tags[tag.name] = tag
        self.taxonomies[request.parent].policy_tag_count += 1
        return tag

    def _update_tag(self, request: dc.UpdatePolicyTagRequest) -> dc.PolicyTag:
        sent = request.policy_tag
        current = self.tags.get(sent.name)
        if current is None:
            raise Abort(grpc.StatusCode.NOT_FOUND, f"{sent.name} not found")
        paths = list(request.update_mask.paths)
        assert paths, "headwater always sends an update mask"
        for path in paths:
            setattr(current, path, getattr(sent, path))
        return current

    def _delete_tag(self, request: dc.DeletePolicyTagRequest) -> empty_pb2.Empty:
        if request.name not in self.tags:
            raise Abort(grpc.StatusCode.NOT_FOUND, f"{request.name} not found")
        self._drop_tag(request.name)
        return empty_pb2.Empty()

    def _drop_tag(self, name: str) -> None:
        self.tags.pop(name, None)
        for child in [n for n, t in self.tags.items() if t.parent_policy_tag == name]:
            self._drop_tag(child)
        for policy in [n for n, p in self.policies.items() if p.policy_tag == name]:
            del self.policies[policy]

    # -- data policies --

    def _list_policies(self, request: dp.ListDataPoliciesRequest) -> dp.ListDataPoliciesResponse:
        items, token = self._page(request, [p for n, p in sorted(self.policies.items())
                                            if n.startswith(request.parent + "/dataPolicies/")])
        return dp.ListDataPoliciesResponse(data_policies=items, next_page_token=token)

    def _create_policy(self, request: dp.CreateDataPolicyRequest) -> dp.DataPolicy:
        policy = copy_message(request.data_policy)
        if not policy.data_policy_id:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "data_policy_id is required")
        project = request.parent.split("/locations/")[0]
        if any(n.startswith(project + "/") and p.data_policy_id == policy.data_policy_id
               for n, p in self.policies.items()):
            raise Abort(grpc.StatusCode.ALREADY_EXISTS, f"data policy {policy.data_policy_id} already exists")
        if policy.policy_tag not in self.tags:
            raise Abort(grpc.StatusCode.NOT_FOUND, f"policy tag {policy.policy_tag} not found")
        if policy.data_policy_type != dp.DataPolicy.DataPolicyType.DATA_MASKING_POLICY:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "headwater's fake knows masking policies only")
        policy.name = f"{request.parent}/dataPolicies/{policy.data_policy_id}"
        self.policies[policy.name] = policy
        return policy

    def _update_policy(self, request: dp.UpdateDataPolicyRequest) -> dp.DataPolicy:
        sent = request.data_policy
        current = self.policies.get(sent.name)
        if current is None:
            raise Abort(grpc.StatusCode.NOT_FOUND, f"{sent.name} not found")
        paths = list(request.update_mask.paths)
        assert paths, "headwater always sends an update mask"
        for path in paths:
            if path in ("policy_tag", "data_policy_type", "data_policy_id"):
                raise Abort(grpc.StatusCode.INVALID_ARGUMENT, f"{path} cannot be updated")
            setattr(current, path, getattr(sent, path))
        return current

    def _delete_policy(self, request: dp.DeleteDataPolicyRequest) -> empty_pb2.Empty:
        if self.policies.pop(request.name, None) is None:
            raise Abort(grpc.StatusCode.NOT_FOUND, f"{request.name} not found")
        return empty_pb2.Empty()


