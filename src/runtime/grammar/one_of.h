// oneOf with exactly-one semantics. The grammar of a oneOf is the alternation of its branches; that is exact
// only when no value the grammar lets a branch produce is also accepted by another branch. This decides it
// for the cases real schemas use, with JSON Schema's own semantics for the other branch (a branch without
// `type` accepts any type; `properties` alone does not assert "object"):
//   - type:    the branch produces only types the other branch does not accept (integer within number);
//   - literal: the branch is a const/enum whose every value the other branch rejects by its const/enum/type;
//   - object:  the branch always writes a property P (required) that the other branch rejects (its P schema
//              is a const/enum/type that excludes every value this branch writes for P, or it has
//              additionalProperties false without P), or the other branch requires a property this branch
//              never writes.
// Where two branches overlap only because one of them may write an optional property that the other
// requires, that property is dropped from the branch (its schema becomes `false`): the grammar then
// enforces exclusivity by producing less, never a value that breaks oneOf. Anything else is refused with
// "unsupported JSON Schema keyword 'oneOf' at PATH: ..." (a 400), never enforced as anyOf.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "runtime/grammar/json_schema.h"

namespace dsv4::grammar {

// `branches`: the oneOf's branches, each already merged with the parent schema's keywords and with its
// top-level $ref/allOf resolved. `resolve` does the same for a nested schema (a property's). Returns the
// branches to compile as alternatives; `changed[i]` says whether branch i was restricted.
std::vector<SchemaJson> exclusive_one_of(std::vector<SchemaJson> branches, const std::string& path,
                                         const std::function<SchemaJson(const SchemaJson&)>& resolve,
                                         std::vector<bool>& changed);

}  // namespace dsv4::grammar
